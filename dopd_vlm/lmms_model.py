"""The lmms-eval model ``dopd_vlm``: evaluates any checkpoint this project writes, with no conversion.

Registered through the ``lmms_eval.models`` entry-point group (``pyproject.toml``)::

    [project.entry-points."lmms_eval.models"]
    dopd_vlm = "dopd_vlm.lmms_model:manifest"

lmms-eval 0.7.3 (``lmms_eval/models/registry_v2.py``) accepts as the entry-point object a
``ModelManifest``, an iterable of them, or a callable returning either; ``manifest`` is the callable.

Usage (CPU, offline)::

    lmms-eval --model dopd_vlm --model_args pretrained=CKPT_DIR,max_new_tokens=16 \\
        --tasks synthetic_scenes --include_path eval/tasks --batch_size 4 --output_path OUT

Model arguments (``--model_args k=v,...``): ``pretrained`` (checkpoint folder: a model plus its
processor or tokenizer), ``device`` (default ``cpu``), ``dtype`` (default float32 on CPU, bfloat16
elsewhere), ``max_new_tokens`` (replaces every task's own ``max_new_tokens``, up or down; default:
the task's value; lmms-eval hands the task's ``generation_kwargs`` to the model per request, so
this model arg is where a run-wide budget is set), ``chat_template_kwargs`` (a JSON mapping of
keyword arguments for the checkpoint's chat template, e.g. ``'{"enable_thinking": false}'`` for
non-thinking Qwen3, the same mapping as the training config's ``model.chat_template_kwargs``;
``enable_thinking=false`` is accepted as a shorthand; when neither is given, a checkpoint written
by ``dopd-vlm train``/``sft`` uses its run's ``model.chat_template_kwargs``, and ``{}`` turns that off). Batch size comes from lmms-eval's ``--batch_size`` (passing it in ``--model_args``
too makes lmms-eval 0.7.3 call the class with ``batch_size`` twice).

This is a chat model (``is_simple = False``): lmms-eval hands it, per request,
``(ctx, doc_to_messages, gen_kwargs, doc_id, task, split)`` and it renders the messages with the
checkpoint's own chat template through the same loading/encoding path as training, so training
and evaluation prompts cannot drift apart. Decoding is greedy unless the task asks for sampling.
Under ``accelerate launch --num_processes N -m lmms_eval ...`` each process holds one model copy and
lmms-eval shards the documents (data parallel).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

MODEL_ID = "dopd_vlm"
CLASS_PATH = "dopd_vlm.lmms_model.DopdVLM"


def manifest():
    """Entry-point payload for lmms-eval's model registry (chat implementation only).

    Defined before any lmms_eval import: importing this module first triggers
    ``lmms_eval.models``' registry, which loads this entry point while this module is still
    half-initialised; ``manifest`` must already exist then.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, chat_class_path=CLASS_PATH)


from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts  # noqa: E402
from lmms_eval.api.model import lmms  # noqa: E402

# Project decision: when a task gives no max_new_tokens, generate at most this many tokens
# (lmms-eval's own chat models use a similar fallback).
DEFAULT_TASK_MAX_NEW_TOKENS = 128
DTYPES = ("float32", "bfloat16", "float16")


# ------------------------------------------------------------------------ loading and encoding
# Loading and prompt encoding go through the project's adapters (dopd_vlm/adapters), the code the
# trainer uses, so evaluation prompts are rendered exactly like training prompts.
def _load(pretrained: str, device: str, dtype: str):
    """-> (adapter, model in eval mode on ``device``, processor or tokenizer)."""
    from dopd_vlm.adapters import get_adapter

    adapter = get_adapter(pretrained)
    model, processor = adapter.load(pretrained, dtype=dtype, device=device)
    return adapter, model, processor


def split_media(hf_messages: list[dict]) -> tuple[list[dict], list]:
    """lmms-eval's HF messages (PIL images inline: ``{"type": "image", "image": PIL}``) -> the
    record form used in training: ``{"type": "image"}`` placeholders plus the RGB images in order.
    Video and audio parts are refused (no family here reads them)."""
    messages, images = [], []
    for message in hf_messages:
        content = []
        for part in message["content"]:
            if part["type"] == "text":
                content.append({"type": "text", "text": part["text"]})
            elif part["type"] == "image":
                content.append({"type": "image"})
                images.append(_as_rgb(part["image"]))
            else:
                raise ValueError(f"dopd_vlm: message part of type {part['type']!r} is not supported "
                                 "(images and text only)")
        messages.append({"role": message["role"], "content": content})
    return messages, images


def _as_rgb(image):
    from PIL import Image

    if isinstance(image, str):  # lmms-eval tasks may give image file paths
        image = Image.open(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"dopd_vlm: expected a PIL image or an image path, got {type(image).__name__}")
    return image.convert("RGB")


def _as_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise ValueError(f"dopd_vlm: {name}={value!r}; expected true or false")


def parse_chat_template_kwargs(value: dict | str | None) -> dict:
    """The ``chat_template_kwargs`` model arg -> a dict: a mapping, a JSON object string
    (``'{"enable_thinking": false}'``; lmms-eval keeps braces together when splitting model_args),
    or ``None`` / ``""`` for none."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(str(value))
    except json.JSONDecodeError as e:
        raise ValueError(f"dopd_vlm: chat_template_kwargs={value!r} is not a JSON object ({e.msg}); "
                         "write e.g. chat_template_kwargs='{\"enable_thinking\": false}'") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"dopd_vlm: chat_template_kwargs={value!r} is not a JSON object")
    return parsed


# ------------------------------------------------------------------------ the lmms-eval model
def _truncate_at_stops(text: str, until: Iterable[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string (lmms-eval's ``until``)."""
    cut = len(text)
    for stop in until:
        if stop:
            i = text.find(stop)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def generation_settings(gen_kwargs: dict, cap: int | None) -> tuple[dict, list[str]]:
    """lmms-eval ``gen_kwargs`` -> (HF ``generate`` kwargs, stop strings).

    Greedy unless the task asks for sampling (``do_sample`` true or ``temperature > 0``);
    ``cap`` (the ``max_new_tokens`` model arg), when given, replaces the task's ``max_new_tokens``
    (raising or lowering it).
    """
    known = {"until", "max_new_tokens", "temperature", "do_sample", "top_p", "top_k", "num_beams"}
    unknown = sorted(set(gen_kwargs) - known)
    if unknown:
        # Task-specific extras (e.g. image_aspect_ratio) are meaningless to HF generate; ignore them.
        from loguru import logger

        logger.debug(f"dopd_vlm: ignoring generation kwargs {unknown}")
    until = gen_kwargs.get("until") or []
    if isinstance(until, str):
        until = [until]
    max_new = int(gen_kwargs.get("max_new_tokens") or DEFAULT_TASK_MAX_NEW_TOKENS)
    if cap is not None:
        max_new = int(cap)
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    do_sample = bool(gen_kwargs.get("do_sample", False)) or temperature > 0
    out = {"max_new_tokens": max_new, "do_sample": do_sample, "num_beams": int(gen_kwargs.get("num_beams") or 1)}
    if do_sample:
        out["temperature"] = temperature if temperature > 0 else 1.0
        if gen_kwargs.get("top_p") is not None:
            out["top_p"] = float(gen_kwargs["top_p"])
        if gen_kwargs.get("top_k") is not None:
            out["top_k"] = int(gen_kwargs["top_k"])
    return out, list(until)


class DopdVLM(lmms):
    """lmms-eval chat model over a dopd-vlm (or base Hugging Face) checkpoint folder."""

    is_simple = False

    def __init__(self, pretrained: str, device: str = "cpu", dtype: str | None = None,
                 max_new_tokens: int | None = None, batch_size: int | str = 1,
                 max_batch_size: int | None = None, chat_template_kwargs: dict | str | None = None,
                 enable_thinking: bool | None = None, **kwargs) -> None:
        # max_batch_size: lmms-eval passes it for "auto" batch sizes, which this model refuses.
        super().__init__()
        if kwargs:
            raise ValueError(f"dopd_vlm: unknown model_args {sorted(kwargs)}; known: pretrained, device, "
                             "dtype, max_new_tokens, chat_template_kwargs, enable_thinking (batch size: "
                             "lmms-eval's --batch_size)")
        if chat_template_kwargs is None and enable_thinking is None:
            # not given: the options the checkpoint was trained with (its run's config.yaml), if any
            from dopd_vlm.eval_harness import run_chat_template_kwargs

            template_kwargs = run_chat_template_kwargs(pretrained) or {}
        else:
            template_kwargs = parse_chat_template_kwargs(chat_template_kwargs)
        if enable_thinking is not None:
            template_kwargs["enable_thinking"] = _as_bool(enable_thinking, "enable_thinking")
        if str(batch_size).startswith("auto"):
            raise ValueError("dopd_vlm: --batch_size auto is not supported; give an integer")
        device = str(device or "cpu")
        # Data parallelism under `accelerate launch --num_processes N -m lmms_eval ...`: lmms-eval
        # shards the documents by rank / world size and gathers the results; each process holds a
        # full copy of the model (inference needs no gradient synchronisation).
        from accelerate import PartialState

        state = PartialState()
        if state.num_processes > 1:
            self._rank, self._world_size = state.process_index, state.num_processes
            if device.startswith("cuda"):
                device = f"cuda:{state.local_process_index}"
        # Project decision: float32 on CPU (bf16 matmuls are slow there and change greedy outputs),
        # bfloat16 on accelerators (the usual serving precision of the paper's models).
        dtype = dtype or ("float32" if device == "cpu" else "bfloat16")
        if dtype not in DTYPES:
            raise ValueError(f"dopd_vlm: dtype={dtype!r}; choose from {DTYPES}")
        self.pretrained, self.device, self.dtype = str(pretrained), device, dtype
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"dopd_vlm: batch_size must be >= 1, got {batch_size}")
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self.adapter, self.model, self.processor = _load(self.pretrained, self.device, self.dtype)
        self.adapter.chat_template_kwargs = template_kwargs  # every prompt of this run renders with them
        self._tokenizer = self.adapter.tokenizer(self.processor)
        self._eos_ids = self.adapter.eos_token_ids(self.model, self.processor)
        self._pad_id = self.adapter.pad_token_id(self.processor)

    # lmms-eval's evaluate() ends with clean(), which deletes every nn.Module attribute (to free
    # accelerator memory for a judge model). `dopd-vlm eval` runs one evaluate() per task on one
    # loaded model and sets keep_loaded; plain lmms-eval runs keep lmms-eval's behaviour.
    keep_loaded = False

    def clean(self):
        if not self.keep_loaded:
            super().clean()

    # lmms-eval calls these for loglikelihood / multi-round tasks; this model answers by generation.
    def loglikelihood(self, requests: list[Instance]):
        raise NotImplementedError("dopd_vlm is a generation (chat) model: pick generate_until tasks; "
                                  "loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests: list[Instance]):
        raise NotImplementedError("dopd_vlm does not implement multi-round generation")

    def _messages(self, request: Instance) -> tuple[list[dict], list]:
        from lmms_eval.protocol import ChatMessages

        _ctx, doc_to_messages, _gen_kwargs, doc_id, task, split = request.args
        messages = doc_to_messages(self.task_dict[task][split][doc_id])
        return split_media(ChatMessages(messages=messages).to_hf_messages())

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        import torch
        from tqdm import tqdm

        # Requests with identical generation settings share a batch; results return in request order.
        def settings_key(i: int) -> str:
            return json.dumps(requests[i].args[2], sort_keys=True, default=str)

        order = sorted(range(len(requests)), key=settings_key)
        batches: list[list[int]] = []
        for i in order:
            if batches and len(batches[-1]) < self.batch_size and settings_key(batches[-1][0]) == settings_key(i):
                batches[-1].append(i)
            else:
                batches.append([i])

        results: list[GenerationResult | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="dopd_vlm generating")
        for batch in batches:
            gen, until = generation_settings(requests[batch[0]].args[2], self.max_new_tokens)
            messages_N, images_N = zip(*(self._messages(requests[i]) for i in batch))
            encoded = self.adapter.encode_prompts(self.processor, list(messages_N), list(images_N))
            inputs = {k: v.to(self.device) for k, v in encoded.items()}
            with torch.inference_mode():
                out_N_L = self.model.generate(**inputs, **gen, eos_token_id=self._eos_ids, pad_token_id=self._pad_id)
            # Left padding: every prompt ends at the same column, so the response starts there.
            response_N_R = out_N_L[:, inputs["input_ids"].shape[1]:]
            texts = self._tokenizer.batch_decode(response_N_R, skip_special_tokens=True)
            for row, i in enumerate(batch):
                n_tokens = int((response_N_R[row] != self._pad_id).sum())
                text = _truncate_at_stops(texts[row], until)
                results[i] = GenerationResult(text=text, token_counts=TokenCounts(output_tokens=n_tokens))
                self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[2]), text)
            pbar.update(len(batch))
        pbar.close()
        return results
