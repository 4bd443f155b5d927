"""The adapter contract: everything the trainer, rollouts, scoring and evaluation need to know
about one model family, and nothing else.

An adapter is a small stateless object chosen from a checkpoint's ``config.model_type``
(``dopd_vlm.adapters.get_adapter``). Model-family knowledge (chat-template quirks, the vision
tensors, ``mm_token_type_ids``, ``rope_deltas``, the box coordinate convention) lives only in the
family files next to this one; the rest of the package talks to this interface.

Contract (stable; other modules build on it):

- ``family: str`` and ``box_format: str`` — one of ``BOX_FORMATS`` ("abs_xyxy": absolute pixels,
  of ``box_target_size`` when that is not None; "grid1000": integers 0-1000 relative to the
  image; "rel01": floats 0-1), consumed by ``dopd_vlm.privileged.render_privileged``.
- ``load(path, dtype="float32", device="cpu", trust_remote_code=False, attn_implementation=None)
  -> (model, processor)``: safetensors only, remote code only when asked for.
- ``encode_prompts(processor, messages_list, images_list, add_generation_prompt=True) -> dict``
  of tensors, left padded for generation; per-token tensors are the ``input_ids``,
  ``attention_mask`` and the family's ``token_extra_keys`` (e.g. ``mm_token_type_ids``); every
  other key is a vision tensor, which ``split_vision`` / ``cat_vision`` cut into samples and glue
  back (so a batch can be expanded G times or sub-selected without re-running the processor).
- ``vocab_size(processor)``: the tokenizer size, used to slice logits of models whose embedding
  matrix is padded wider than the tokenizer.
- ``scoring_inputs(model, input_ids, attention_mask, token_extras, vision) -> dict``: keyword
  arguments for a full (no-cache) forward with the positions recomputed from these very tokens
  (never a ``rope_deltas`` cached by ``generate``).
- ``placeholder_token_ids(processor)``: image/video placeholder ids, never valid in a response.
- ``response_logits(model, inputs, R) -> [B, R, V_model]`` and ``response_hidden(model, inputs, R)
  -> [B, R, H]`` (the final-norm output that the LM head consumes), both through the model's
  top-level forward so distributed wrappers see the call; ``lm_head_weight(model) -> [V_model, H]``.

Shape legend: ``B`` sequences, ``T`` prompt tokens, ``L`` total tokens, ``H`` hidden size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch

from dopd_vlm.privileged import BOX_FORMATS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class AdapterError(ValueError):
    """A checkpoint, processor or input does not fit the adapter; the message names it."""


def _check_safetensors(path: Path) -> None:
    """Refuse pickled weights unless a safetensors file is there (project decision: safetensors
    only, since ``torch.load`` of a foreign checkpoint can run arbitrary code)."""
    if not path.is_dir():
        return  # a Hub id: transformers itself prefers safetensors; nothing to inspect offline
    if not any(path.glob("*.safetensors")) and not (path / "model.safetensors.index.json").exists():
        raise AdapterError(f"{path}: no *.safetensors weights found; this project loads safetensors "
                           "only (convert the checkpoint with save_pretrained(safe_serialization=True))")
    for file in sorted(path.glob("*.safetensors")):
        reason = _not_safetensors(file)
        if reason:
            raise AdapterError(f"{file}: not a safetensors file ({reason}); refused: this project loads safetensors "
                               "only, since a pickle runs code when it is loaded")


def _not_safetensors(file: Path) -> str:
    """Why ``file`` is no safetensors file ("" if its header reads as one): an 8-byte little-endian
    header length, then that many bytes of a JSON object (the safetensors format)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(8)
            if head[:4] == b"PK\x03\x04":
                return "a zip archive, as torch.save writes: pickled tensors"
            if head[:1] == b"\x80":
                return "a pickle"
            if len(head) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            n = int.from_bytes(head, "little")
            if n > min(size - 8, 100 << 20):
                return f"its header claims {n} bytes in a {size}-byte file"
            header = json.loads(fh.read(n).decode("utf-8"))
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    except (UnicodeDecodeError, ValueError):
        return "its header is not JSON"
    return "" if isinstance(header, dict) else "its header is not a JSON object"


class Adapter:
    """Base adapter; a family subclasses it and overrides what differs."""

    family: ClassVar[str] = ""
    box_format: ClassVar[str] = "abs_xyxy"
    model_types: ClassVar[tuple[str, ...]] = ()
    # per-token tensors besides input_ids / attention_mask (padded like input_ids; the response
    # part of a scoring sequence is text, so extras are extended with zeros there)
    token_extra_keys: ClassVar[tuple[str, ...]] = ()
    takes_images: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.box_format not in BOX_FORMATS:
            raise TypeError(f"{cls.__name__}.box_format {cls.box_format!r} is not one of {BOX_FORMATS}")

    def __init__(self, config: Any = None):
        self.config = config  # the checkpoint's transformers config, when known
        # Keyword arguments for every chat-template call (e.g. {"enable_thinking": False} for
        # non-thinking Qwen3); set once per run from model.chat_template_kwargs (training) or the
        # lmms-eval model arg, so training views, rollouts, scoring and evaluation render alike.
        self.chat_template_kwargs: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r}, box_format={self.box_format!r})"

    # ------------------------------------------------------------------ loading
    def model_class(self):
        raise NotImplementedError

    def load(self, path, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
             attn_implementation: str | None = None):
        """Load ``(model, processor)`` from a ``save_pretrained`` folder (model in eval mode)."""
        model = self.load_model(path, dtype, device, trust_remote_code, attn_implementation)
        processor = self.load_processor(path, trust_remote_code)
        self.validate(model, processor, str(path))
        return model, processor

    def load_model(self, path, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
                   attn_implementation: str | None = None):
        _check_safetensors(Path(path))
        if dtype not in DTYPES:
            raise AdapterError(f"dtype {dtype!r} not one of {sorted(DTYPES)}")
        kwargs = dict(dtype=DTYPES[dtype], use_safetensors=True, trust_remote_code=trust_remote_code)
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = self.model_class().from_pretrained(str(path), **kwargs).to(device)
        model.eval()
        return model

    def load_processor(self, path, trust_remote_code: bool = False):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code)

    def validate(self, model, processor, where: str = "model") -> None:
        """Boundary checks run once after loading."""
        tok = self.tokenizer(processor)
        if processor.chat_template is None and tok.chat_template is None:
            raise AdapterError(f"{where}: no chat template (chat_template.jinja / tokenizer_config.json); teacher "
                               "and student prompts cannot be rendered")
        if tok.pad_token_id is None:
            raise AdapterError(f"{where}: the tokenizer has no pad token; set one (e.g. <|endoftext|>)")
        v_model = self.lm_head_weight(model).shape[0]
        if v_model < len(tok):
            raise AdapterError(f"{where}: the LM head has {v_model} rows but the tokenizer has {len(tok)} "
                               "tokens; model and tokenizer do not belong together")

    # ------------------------------------------------------------------ text
    def context_length(self, processor) -> int:
        limit = self.tokenizer(processor).model_max_length
        cfg = self.config if isinstance(self.config, dict) else {}
        text = cfg.get("text_config") or cfg
        if text.get("max_position_embeddings"):
            limit = min(limit, text["max_position_embeddings"])
        return limit

    def tokenizer(self, processor):
        """The tokenizer inside ``processor`` (a processor of a VL family, the tokenizer itself for
        a text-only family)."""
        return processor.tokenizer

    def vocab_size(self, processor) -> int:
        return len(self.tokenizer(processor))

    def pad_token_id(self, processor) -> int:
        return self.tokenizer(processor).pad_token_id

    def eos_token_ids(self, model, processor) -> list[int]:
        """Ids that end a response: the generation config's EOS (int or list) plus the tokenizer's."""
        eos = model.generation_config.eos_token_id
        ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        tok_eos = self.tokenizer(processor).eos_token_id
        if tok_eos is not None and tok_eos not in ids:
            ids.append(tok_eos)
        if not ids:
            raise AdapterError("neither the generation config nor the tokenizer defines an EOS token")
        return ids

    def placeholder_token_ids(self, processor) -> list[int]:
        """Token ids that stand for image/video features in a prompt. A response must not contain
        them (the model would try to splice features in), so sampling suppresses them."""
        return []

    def normalize_messages(self, messages: list[dict]) -> list[dict]:
        """Messages as the family's chat template expects them (default: unchanged)."""
        return messages

    def render_chat(self, processor, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return processor.apply_chat_template(self.normalize_messages(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt,
                                             **self.chat_template_kwargs)

    def encode_prompts(self, processor, messages_list: list[list[dict]], images_list: list[list],
                       add_generation_prompt: bool = True) -> dict[str, torch.Tensor]:
        """Render chat templates and run the processor: left-padded ``input_ids``/``attention_mask``
        (+ the family's token extras) and the vision tensors of all images, in order."""
        if len(messages_list) != len(images_list):
            raise AdapterError(f"{len(messages_list)} message lists but {len(images_list)} image lists")
        texts = [self.render_chat(processor, m, add_generation_prompt) for m in messages_list]
        return self._run_processor(processor, texts, images_list)

    def _run_processor(self, processor, texts: list[str], images_list: list[list]) -> dict[str, torch.Tensor]:
        flat = [img for imgs in images_list for img in imgs]
        out = processor(text=texts, images=flat or None, return_tensors="pt", padding=True,
                        padding_side="left")
        return dict(out)

    # ------------------------------------------------------------------ vision tensors
    def split_vision(self, vision: dict[str, torch.Tensor], images_per_sample: list[int]) -> list[dict]:
        """Cut the batch's vision tensors into one dict per sample."""
        if vision:
            raise NotImplementedError(f"{self.family}: split_vision for keys {sorted(vision)}")
        return [{} for _ in images_per_sample]

    def cat_vision(self, parts: list[dict]) -> dict[str, torch.Tensor]:
        """Inverse of ``split_vision`` (samples may carry no images)."""
        keys = sorted({k for p in parts for k in p})
        return {k: torch.cat([p[k] for p in parts if k in p], dim=0) for k in keys}

    # ------------------------------------------------------------------ forward
    def scoring_inputs(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       token_extras: dict[str, torch.Tensor], vision: dict[str, torch.Tensor]) -> dict:
        """Keyword arguments for a no-cache forward over whole sequences with positions recomputed
        from ``attention_mask`` (left padding: the first real token gets position 0, as in
        ``generate``)."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    **token_extras, **vision)

    def final_norm(self, model) -> torch.nn.Module:
        """The decoder's final norm, whose output the LM head consumes."""
        return unwrap_model(model).get_decoder().norm

    def response_logits(self, model, inputs: dict, num_response: int) -> torch.Tensor:
        """``[B, R, V_model]`` logits of the last ``num_response`` positions, through the model's own
        top-level forward (so DDP / FSDP hooks run and gradients are synchronised)."""
        return model(**inputs, use_cache=False, logits_to_keep=num_response).logits

    def response_hidden(self, model, inputs: dict, num_response: int) -> torch.Tensor:
        """``[B, R, H]`` final-norm outputs of the last ``num_response`` positions, read by a hook on
        the final norm during the top-level forward (``logits_to_keep=1``: no full-vocabulary
        logits are formed)."""
        captured = []
        handle = self.final_norm(model).register_forward_hook(lambda mod, args, out: captured.append(out))
        try:
            model(**inputs, use_cache=False, logits_to_keep=1)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"{self.family}: the final norm did not run during the forward")
        return captured[-1][:, -num_response:]

    def lm_head_weight(self, model) -> torch.Tensor:
        return unwrap_model(model).get_output_embeddings().weight

    # ------------------------------------------------------------------ boxes
    def box_target_size(self, processor, image_size: tuple[int, int]) -> tuple[int, int] | None:
        """Size ``(w, h)`` in which ``abs_xyxy`` boxes are expressed, when it is not the original
        image size (None: original size, or a relative format)."""
        return None


def unwrap_model(model):
    """The transformers model inside a distributed wrapper (DDP, DeepSpeed, FSDP1, ``torch.compile``;
    accelerate's ``extract_model_from_parallel``; FSDP2's ``fully_shard`` does not wrap). Only
    introspection uses it: calls that must reach the wrapper's forward take ``model`` itself."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def read_model_type(name_or_path_or_config) -> tuple[str, Any]:
    """``(model_type, config)`` from a config object, a config dict, or a checkpoint folder."""
    if isinstance(name_or_path_or_config, dict):
        if "model_type" not in name_or_path_or_config:
            raise AdapterError("config dict has no 'model_type'")
        return name_or_path_or_config["model_type"], name_or_path_or_config
    if isinstance(name_or_path_or_config, (str, Path)):
        path = Path(name_or_path_or_config)
        cfg_file = path / "config.json"
        if path.is_dir():
            if not cfg_file.exists():
                raise AdapterError(f"{path}: no config.json (not a save_pretrained folder)")
            cfg = json.loads(cfg_file.read_text())
            if "model_type" not in cfg:
                raise AdapterError(f"{cfg_file}: no 'model_type' field")
            if cfg.get("auto_map"):
                from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

                if cfg["model_type"] not in CONFIG_MAPPING_NAMES:
                    raise AdapterError(f"{cfg_file}: model_type {cfg['model_type']!r} exists only as custom code in the "
                                       f"checkpoint (auto_map {sorted(cfg['auto_map'])}); refused: no adapter knows this "
                                       "model type, and a checkpoint's code is not run to find out")
            return cfg["model_type"], cfg
        from transformers import AutoConfig  # a Hub id (works offline when cached)

        try:
            cfg = AutoConfig.from_pretrained(str(name_or_path_or_config))
        except OSError as e:
            raise AdapterError(f"cannot load {str(name_or_path_or_config)!r}: not a local checkpoint folder, and the "
                               f"Hugging Face Hub is offline or unreachable ({type(e).__name__}: {e})") from e
        return cfg.model_type, cfg
    return name_or_path_or_config.model_type, name_or_path_or_config
