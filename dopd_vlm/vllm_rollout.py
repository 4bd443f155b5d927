"""Rollouts from vLLM during training: a colocated engine per process, or a vLLM server.

With ``rollout.engine=vllm`` the trainer samples ``y ~ pi_S(. | x)`` (docs/method.md §6 step 1) with
vLLM instead of transformers' ``generate``. The policy must be the *current* student, so after
every optimiser step its weights (LoRA deltas merged in) are pushed into vLLM before the next
rollouts, and vLLM's caches that hold values computed with the old weights are dropped:

* prefix cache: cached prompt KV blocks from the old weights would silently shift log-probs;
* encoder cache (VLMs): cached vision-encoder outputs of the old vision tower.

Two engines, one interface (``push(hf_model)``, ``sample(batch, ...) -> Rollouts``):

``ColocatedEngine`` (default)
    A ``vllm.LLM`` inside the training process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, one worker),
    taking ``rollout.vllm_gpu_memory_utilization`` of the GPU (``rollout.vllm_cpu_kv_cache_gb``
    of KV cache on CPU). Weights go in as tensors through ``collective_rpc`` into the worker
    extension ``WeightSync`` below, which calls vLLM's in-place ``reload_weights`` and re-ties a
    tied ``lm_head`` (vLLM's CPU kernels keep a repacked copy of it that a reload leaves stale).
``ServerEngine`` (``rollout.server_url``)
    A vLLM OpenAI-compatible server elsewhere, started with ``VLLM_SERVER_DEV_MODE=1`` (its
    ``/collective_rpc`` and cache-reset endpoints). Each push writes a safetensors folder to
    ``rollout.server_weights_dir`` (which the server must see) and asks the server to reload it.
    At start it checks the server serves ``rollout.server_model``. Text prompts go to
    ``/v1/completions`` as token ids; prompts with images to ``/v1/chat/completions`` as the
    rendered text (a pass-through chat template, so the server needs
    ``--trust-request-chat-template``) plus the images as lossless PNG data URLs.

Prompts reach vLLM as the trained forward sees them: text-only prompts as the very token ids of
the HF batch; prompts with images as the rendered text plus the same PIL images, which vLLM runs
through the same checkpoint's processor; the prompt token ids vLLM reports are then checked
against the HF batch (a different image resize would change the number of image tokens).

The per-step metric ``rollout/logprob_abs_diff`` (mean over valid tokens) and
``rollout/logprob_max_abs_diff`` compare vLLM's sampling log-probs with the trainer's own scoring
of the same tokens (``logprob_mismatch``): colocated engines drift silently when a push is wrong.

vLLM is optional and pins its own torch/transformers (README "vLLM"): import it only here.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from dopd_vlm.rollout import Rollouts, response_mask

WEIGHT_SYNC = "dopd_vlm.vllm_rollout.WeightSync"


class VLLMRolloutError(RuntimeError):
    """vLLM is missing, misconfigured, or returned something the trainer cannot use."""


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise VLLMRolloutError("engine='vllm' needs the optional vLLM package, which is not installed "
                               "(pip install -e \".[vllm]\"; README \"vLLM\"), or use engine='hf'") from e
    return vllm


# ------------------------------------------------------------------------------------- weights
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The student's weights under its checkpoint names, LoRA deltas merged in, without copying
    the model (a ``peft`` LoRA layer contributes ``W + get_delta_weight``; adapter tensors are
    dropped; ``.base_layer.`` leaves the names)."""
    deltas: dict[str, torch.Tensor] = {}
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        LoraLayer = None
    if LoraLayer is not None:
        for name, mod in model.named_modules():
            if isinstance(mod, LoraLayer) and not mod.merged:
                active = [a for a in mod.active_adapters if a in mod.lora_A or a in getattr(mod, "lora_embedding_A", {})]
                if active:
                    with torch.no_grad():
                        deltas[f"{name}.base_layer.weight"] = sum(mod.get_delta_weight(a) for a in active)
    out = {}
    for name, t in model.state_dict().items():
        if ".lora_" in name or ".original_module." in name:
            continue
        t = t.detach()
        if name in deltas:
            t = t + deltas[name].to(t.dtype)
        name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        out[name] = t
    return out


def _tied(hf_config) -> bool:
    text = getattr(hf_config, "text_config", None)
    for cfg in (hf_config, text):
        if cfg is not None and getattr(cfg, "tie_word_embeddings", False):
            return True
    return False


class WeightSync:
    """vLLM worker extension (``worker_extension_cls``): its methods run inside the vLLM worker."""

    def dopd_reload_weights(self, weights=None, weights_path: str | None = None) -> int:
        """Reload the weights in place, then re-tie a tied ``lm_head``; returns the heads re-tied."""
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

        self.reload_weights(weights_iterator=weights, weights_path=weights_path)  # Worker.reload_weights
        model = self.model_runner.get_model()
        if not _tied(self.model_runner.model_config.hf_config):
            return 0
        heads = [m for m in model.modules() if isinstance(m, ParallelLMHead)]
        embeds = [m for m in model.modules() if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)]
        if len(heads) != 1 or len(embeds) != 1:
            raise RuntimeError(f"tied embeddings: expected one lm_head and one embedding, found {len(heads)} / {len(embeds)}")
        head, embed = heads[0], embeds[0]
        head.weight = embed.weight
        head.quant_method.process_weights_after_loading(head)  # rebuilds the CPU kernel's packed copy
        return 1



# ------------------------------------------------------------------------------------- prompts
def _prompt_ids(batch) -> list[list[int]]:
    """Each row's prompt token ids without the left padding."""
    return [row[m.bool()].tolist() for row, m in zip(batch.input_ids_B_T.cpu(), batch.attention_mask_B_T.cpu())]


def vllm_prompts(batch) -> list[dict]:
    """vLLM prompt dicts for the P rows of ``batch`` (module doc: token ids, or text + images)."""
    ids = _prompt_ids(batch)
    if not any(batch.images_per_sample):
        return [{"prompt_token_ids": r} for r in ids]
    if not batch.texts:
        raise VLLMRolloutError("rollouts with images through vLLM need the rendered prompt texts; build the batch "
                               "with collate()")
    return [{"prompt": text, "multi_modal_data": {"image": list(imgs)}} if imgs else {"prompt_token_ids": r}
            for text, imgs, r in zip(batch.texts, batch.images, ids)]


def check_prompt_ids(expected: list[list[int]], got: list[list[int] | None]) -> None:
    for i, (e, g) in enumerate(zip(expected, got)):
        if g is not None and list(g) != e:
            raise VLLMRolloutError(
                f"prompt {i}: vLLM's prompt has {len(g)} tokens, the trainer's {len(e)} (first difference at "
                f"{next((j for j, (a, b) in enumerate(zip(g, e)) if a != b), min(len(g), len(e)))}); the image "
                "processor settings (min/max pixels) or the chat template differ between vLLM and the trainer")


def to_rollouts(rows: list[list[int]], lps: list[list[float]] | None, cut: list[bool], G: int, pad_id: int,
                eos_ids: list[int]) -> Rollouts:
    """``Rollouts`` (ids padded with ``pad_id``, mask up to and including the first EOS) from
    per-completion token lists, in prompt-major order."""
    R = max(1, max((len(r) for r in rows), default=1))
    ids_B_R = torch.full((len(rows), R), pad_id, dtype=torch.long)
    lengths_B = torch.tensor([len(r) for r in rows], dtype=torch.long)
    for i, r in enumerate(rows):
        ids_B_R[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    mask_B_R, _ = response_mask(ids_B_R, eos_ids)
    mask_B_R &= torch.arange(R)[None] < lengths_B[:, None]
    ids_B_R = ids_B_R.masked_fill(~mask_B_R, pad_id)
    logprobs_B_R = None
    if lps is not None:
        logprobs_B_R = torch.zeros(len(rows), R)
        for i, lp in enumerate(lps):
            logprobs_B_R[i, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
        logprobs_B_R = logprobs_B_R.masked_fill(~mask_B_R, 0.0)
    return Rollouts(ids_B_R, mask_B_R, torch.tensor(cut, dtype=torch.bool), G, logprobs_B_R)


def sampling_params(G, max_new_tokens, temperature, top_p, top_k, eos_ids, placeholder_ids, logprobs: bool, seed=None):
    """vLLM ``SamplingParams`` with exactly the requested knobs (rollout.py: same as the HF path).

    vLLM reports raw log-probs (``logprobs_mode`` "raw_logprobs": before temperature, top-k/top-p
    and logit bias), the same quantity the trainer scores; ``top_k`` 0 disables top-k there too.
    """
    from vllm import SamplingParams

    return SamplingParams(
        n=G, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_new_tokens,
        stop_token_ids=list(eos_ids), logprobs=0 if logprobs else None, detokenize=False, seed=seed,
        repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, min_p=0.0, skip_special_tokens=False,
        # image/video placeholders are never text (-100 is vLLM's floor for a logit bias)
        logit_bias={int(i): -100.0 for i in placeholder_ids} or None,
    )


def generate(llm, batch, G: int, max_new_tokens: int, temperature: float, top_p: float, top_k: int,
             eos_ids: list[int], return_logprobs: bool) -> Rollouts:
    """Sample ``G`` responses per prompt of ``batch`` with a ``vllm.LLM`` (prompt-major order)."""
    params = sampling_params(G, max_new_tokens, temperature, top_p, top_k, eos_ids, batch.placeholder_ids,
                             return_logprobs)
    outputs = llm.generate(vllm_prompts(batch), params, use_tqdm=False)  # results keep the input order
    check_prompt_ids(_prompt_ids(batch), [o.prompt_token_ids for o in outputs])
    rows, lps, cut = [], [], []
    for req in outputs:
        if len(req.outputs) != G:
            raise VLLMRolloutError(f"vLLM returned {len(req.outputs)} completions for a prompt, expected {G}")
        for comp in sorted(req.outputs, key=lambda c: c.index):
            ids = list(comp.token_ids)
            rows.append(ids)
            cut.append(comp.finish_reason == "length")
            if return_logprobs:
                lps.append([step[tok].logprob for step, tok in zip(comp.logprobs, ids)])
    return to_rollouts(rows, lps if return_logprobs else None, cut, G, batch.pad_token_id, eos_ids)


# ------------------------------------------------------------------------------------- metric
def token_logprobs(logits_B_R_V: torch.Tensor, ids_B_R: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[y]`` per token, float32, no grad (the trainer's own scoring)."""
    with torch.no_grad():
        logits = logits_B_R_V.detach().float()
        return logits.gather(-1, ids_B_R[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)


def logprob_mismatch(rollout_lp_B_R: torch.Tensor, trainer_lp_B_R: torch.Tensor, mask_B_R: torch.Tensor) -> dict:
    """Mean / max |log pi_vLLM(y) - log pi_trainer(y)| over the valid tokens, and the sequence-level
    mean of ``exp(sum trainer - sum vLLM)`` (1 when the two agree)."""
    m = mask_B_R.to(trainer_lp_B_R.device)
    diff_B_R = (trainer_lp_B_R.float() - rollout_lp_B_R.to(trainer_lp_B_R.device).float()).masked_fill(~m, 0.0)
    n = int(m.sum())
    if n == 0:
        return {}
    return {"rollout/logprob_abs_diff": float(diff_B_R.abs().sum() / n),
            "rollout/logprob_max_abs_diff": float(diff_B_R.abs().max()),
            "rollout/seq_ratio_mean": float(diff_B_R.sum(-1).exp().mean())}


def probe(engine, hf_model, processor, adapter, batch, max_new_tokens: int = 8) -> dict:
    """Sample one response per prompt of ``batch`` (P rows) with ``engine`` and score it with the
    HF model: ``logprob_mismatch`` of the two on those tokens (a check that a push arrived whole)."""
    from dopd_vlm.scoring import score

    eos_ids = adapter.eos_token_ids(hf_model, processor)
    r = engine.sample(batch, 1, max_new_tokens, 1.0, 1.0, 0, eos_ids, return_logprobs=True)
    dev = batch.input_ids_B_T.device
    ids_B_R, mask_B_R = r.response_ids_B_R.to(dev), r.response_mask_B_R.to(dev)
    was_training = hf_model.training
    hf_model.eval()
    try:
        with torch.no_grad():
            logits_B_R_V = score(hf_model, adapter, batch, ids_B_R, mask_B_R)[..., :batch.vocab_size]
    finally:
        hf_model.train(was_training)
    return logprob_mismatch(r.logprobs_B_R, token_logprobs(logits_B_R_V, ids_B_R), mask_B_R)


def prompt_probe(llm, hf_model, adapter, batch) -> tuple[dict, list[torch.Tensor]]:
    """Teacher-forced check of a colocated engine: the log-probs vLLM gives the prompt tokens of
    ``batch`` (``prompt_logprobs``, raw) against the HF model's forward of the same tokens.
    Returns ``(logprob_mismatch, vLLM's per-row log-probs)``; deterministic, so any weight change
    moves the second."""
    from vllm import SamplingParams

    ids = _prompt_ids(batch)
    outs = llm.generate(vllm_prompts(batch), SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False),
                        use_tqdm=False)
    check_prompt_ids(ids, [o.prompt_token_ids for o in outs])
    v_rows = [torch.tensor([d[t].logprob for d, t in zip(o.prompt_logprobs[1:], r[1:])]) for o, r in zip(outs, ids)]
    was_training = hf_model.training
    hf_model.eval()
    try:
        with torch.no_grad():
            inputs = adapter.scoring_inputs(hf_model, batch.input_ids_B_T, batch.attention_mask_B_T,
                                            batch.token_extras, batch.vision)
            logits_B_T_V = hf_model(**inputs, use_cache=False).logits[..., :batch.vocab_size]
    finally:
        hf_model.train(was_training)
    target_B_T = batch.input_ids_B_T[:, 1:]
    hf_B_T = token_logprobs(logits_B_T_V[:, :-1], target_B_T)
    mask_B_T = batch.attention_mask_B_T[:, 1:].bool() & batch.attention_mask_B_T[:, :-1].bool()
    v_B_T = torch.zeros_like(hf_B_T)
    for i, v in enumerate(v_rows):  # left padding: a row's tokens end at the last column
        v_B_T[i, v_B_T.shape[1] - len(v):] = v.to(v_B_T.device)
    return logprob_mismatch(v_B_T, hf_B_T, mask_B_T), v_rows


# ------------------------------------------------------------------------------------- engines
def _vllm_dtype(model_cfg, run_cfg) -> str:
    if run_cfg.mixed_precision == "bf16":
        return "bfloat16"
    if run_cfg.mixed_precision == "fp16":
        return "float16"
    return model_cfg.dtype


class ColocatedEngine:
    """A ``vllm.LLM`` in this process, fed the student's weights after each optimiser step."""

    def __init__(self, model_path: str, rollout_cfg, dtype: str = "float32", seed: int = 0,
                 trust_remote_code: bool = False):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # tensors go to the worker without pickling
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(rollout_cfg.vllm_cpu_kv_cache_gb))))
        vllm = import_vllm()
        # One engine per training process: alone, vLLM's in-process "uni" executor; under torchrun /
        # accelerate, "external_launcher" (each rank its own tensor-parallel-1 engine, as TRL's
        # colocate mode does; tested with 2 CPU processes, not yet on GPUs)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1
        kwargs = dict(model=str(model_path), dtype=dtype, seed=seed, trust_remote_code=trust_remote_code,
                      distributed_executor_backend="external_launcher" if distributed else "uni",
                      worker_extension_cls=WEIGHT_SYNC,
                      # CPU: no CUDA graphs, and torch.compile on a small box costs more than it saves [D]
                      enforce_eager=rollout_cfg.vllm_enforce_eager or not torch.cuda.is_available())
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = rollout_cfg.vllm_gpu_memory_utilization
        if rollout_cfg.vllm_max_model_len:
            kwargs["max_model_len"] = rollout_cfg.vllm_max_model_len
        self.llm = vllm.LLM(**kwargs)
        self.version = 0

    def push(self, hf_model) -> dict:
        """Load the student's current weights (LoRA merged) and drop caches built from the old ones."""
        t0 = time.perf_counter()
        weights = list(merged_state_dict(hf_model).items())
        self.llm.collective_rpc("dopd_reload_weights", kwargs={"weights": weights})
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.version += 1
        return {"rollout/push_s": time.perf_counter() - t0}

    def sample(self, batch, G, max_new_tokens, temperature, top_p, top_k, eos_ids, return_logprobs=True) -> Rollouts:
        return generate(self.llm, batch, G, max_new_tokens, temperature, top_p, top_k, eos_ids, return_logprobs)

    def close(self) -> None:
        """Shut the engine down (before accelerate tears down torch.distributed at the end of training)."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None


def _png_data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # lossless: the server decodes the very pixels the trainer used
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class ServerEngine:
    """A vLLM OpenAI-compatible server (``rollout.server_url``); weights pushed via a checkpoint."""

    def __init__(self, url: str, expected_model: str, weights_dir: str | Path, timeout_s: float = 600.0):
        self.url, self.expected, self.timeout = url.rstrip("/"), expected_model, timeout_s
        self.weights_dir = Path(weights_dir)
        self.version = 0
        served = [m["id"] for m in self._request("GET", "/v1/models")["data"]]
        if expected_model not in served:
            raise VLLMRolloutError(f"rollout.server_url={url} serves {served}, not the expected model "
                                   f"{expected_model!r} (set rollout.server_model to its --served-model-name)")
        self.model = expected_model

    def _request(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            hint = (" (start the server with VLLM_SERVER_DEV_MODE=1)" if e.code == 404 else
                    " (prompts with images need the server flag --trust-request-chat-template)"
                    if "trust-request-chat-template" in detail else "")
            raise VLLMRolloutError(f"{method} {self.url}{path}: HTTP {e.code}{hint}: {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            raise VLLMRolloutError(f"{method} {self.url}{path}: {e}") from e
        return json.loads(text) if text.strip() else None

    def push(self, hf_model, processor=None) -> dict:
        """Write the current weights (LoRA merged) as a checkpoint the server reloads in place."""
        from safetensors.torch import save_file

        t0 = time.perf_counter()
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous().cpu() for k, v in merged_state_dict(hf_model).items()}
        if _tied(hf_model.config):
            tensors = {k: v for k, v in tensors.items() if not k.endswith("lm_head.weight")}
        tmp = self.weights_dir / "model.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(self.weights_dir / "model.safetensors")
        hf_model.config.save_pretrained(self.weights_dir)
        self._request("POST", "/collective_rpc", {"method": "dopd_reload_weights",
                                                  "kwargs": {"weights_path": str(self.weights_dir.resolve())}})
        for path in ("/reset_prefix_cache", "/reset_encoder_cache", "/reset_mm_cache"):
            self._request("POST", path)
        self.version += 1
        return {"rollout/push_s": time.perf_counter() - t0}

    def _complete(self, prompt_ids: list[int], text: str, images: list, G, max_new_tokens, temperature, top_p, top_k,
                  eos_ids, placeholder_ids, return_logprobs):
        common = dict(model=self.model, n=G, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                      top_k=top_k if top_k > 0 else -1, stop_token_ids=list(eos_ids), skip_special_tokens=False,
                      include_stop_str_in_output=True, return_tokens_as_token_ids=True, return_token_ids=True,
                      repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, min_p=0.0,
                      logit_bias={str(int(i)): -100 for i in placeholder_ids} or None)
        if not images:
            out = self._request("POST", "/v1/completions", {**common, "prompt": prompt_ids,
                                                            "logprobs": 0 if return_logprobs else None})
            got_prompt = out["choices"][0].get("prompt_token_ids") if out["choices"] else None
            comps = [(c["index"], c.get("token_ids"), c.get("logprobs") and c["logprobs"].get("token_logprobs"),
                      c.get("finish_reason")) for c in out["choices"]]
        else:
            # the rendered prompt is sent as is: a pass-through chat template keeps the server's own
            # template out, and the images follow in order (checked through the returned token ids)
            content = [{"type": "image_url", "image_url": {"url": _png_data_url(im)}} for im in images]
            body = {**common, "messages": [{"role": "user", "content": content + [{"type": "text", "text": text}]}],
                    "chat_template": "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}"
                                     "{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}",
                    "add_generation_prompt": False, "logprobs": return_logprobs,
                    "top_logprobs": 0 if return_logprobs else None}
            out = self._request("POST", "/v1/chat/completions", body)
            got_prompt = out.get("prompt_token_ids")
            comps = [(c["index"], c.get("token_ids"),
                      c.get("logprobs") and [t["logprob"] for t in c["logprobs"]["content"]], c.get("finish_reason"))
                     for c in out["choices"]]
        return got_prompt, sorted(comps, key=lambda c: c[0])

    def sample(self, batch, G, max_new_tokens, temperature, top_p, top_k, eos_ids, return_logprobs=True) -> Rollouts:
        expected = _prompt_ids(batch)
        rows, lps, cut, got = [], [], [], []
        for i, ids in enumerate(expected):
            images = batch.images[i] if batch.images and batch.images_per_sample[i] else []
            text = batch.texts[i] if batch.texts else ""
            got_prompt, comps = self._complete(ids, text, images, G, max_new_tokens, temperature, top_p, top_k,
                                               eos_ids, batch.placeholder_ids, return_logprobs)
            if got_prompt is None:
                raise VLLMRolloutError("the server returned no prompt token ids (needs vLLM >= 0.10: return_token_ids); "
                                       "without them the prompts cannot be checked")
            got.append(got_prompt)
            if len(comps) != G:
                raise VLLMRolloutError(f"the server returned {len(comps)} completions for prompt {i}, expected {G}")
            for _, tok_ids, lp, finish in comps:
                if tok_ids is None:
                    raise VLLMRolloutError("the server returned no token ids (needs vLLM >= 0.10: return_token_ids)")
                rows.append(list(tok_ids))
                cut.append(finish == "length")
                if return_logprobs:
                    lps.append([float(x) for x in lp])
        check_prompt_ids(expected, got)
        return to_rollouts(rows, lps if return_logprobs else None, cut, G, batch.pad_token_id, eos_ids)

    def close(self) -> None:
        pass


def build_engine(cfg, student, model_path: str, output_dir: str | Path, seed: int = 0):
    """The engine ``cfg.rollout`` asks for (None for ``engine=hf``), loaded with the student's
    current weights."""
    rc = cfg.rollout
    if rc.engine != "vllm":
        return None
    from dopd_vlm.console import phase

    if rc.server_url:
        weights_dir = rc.server_weights_dir or str(Path(output_dir) / "rollout_weights")
        with phase("vllm server check"):
            engine = ServerEngine(rc.server_url, rc.server_model or str(model_path), weights_dir, rc.server_timeout_s)
    else:
        with phase("vllm engine start"):
            engine = ColocatedEngine(model_path, rc, dtype=_vllm_dtype(cfg.model, cfg.run), seed=seed,
                                     trust_remote_code=cfg.model.trust_remote_code)
    engine.push(student.hf_model)  # resume / LoRA: the engine starts from the student as it is now
    return engine


def attach(runner, optimizer, cfg, student, model_path: str, output_dir: str | Path, seed: int = 0) -> None:
    """Give ``runner`` (a ``StepRunner``) its vLLM engine and push the student's weights into it
    after every optimiser step (a post-step hook on the optimiser, so a skipped step pushes nothing)."""
    engine = build_engine(cfg, student, model_path, output_dir, seed)
    if engine is None:
        return
    runner.engine = engine
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimiser

    def _push(*_args, **_kwargs):
        runner.pending_metrics.update(engine.push(student.hf_model))

    inner.register_step_post_hook(_push)
