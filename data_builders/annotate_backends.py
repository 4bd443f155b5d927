"""Model backends for ``dopd-vlm annotate``: one chat request in, one reply (with token counts) out.

- ``OpenAIBackend``: any OpenAI-compatible chat-completions endpoint (vLLM's and SGLang's servers,
  ``transformers serve``, hosted APIs) through the ``openai`` client. Images go as base64 data URLs
  (``image_url`` parts), the form chat APIs take. Bounded concurrency (a thread pool of
  ``concurrency`` requests in flight), a timeout per request, retries with exponential backoff on
  connection errors, timeouts, 429 and 5xx (never on 4xx: those are the request's fault), and token
  accounting from the ``usage`` the server returns.
- ``LocalBackend``: offline batches on this machine: vLLM's ``LLM`` where vLLM is installed, else
  transformers ``generate`` (greedy at temperature 0), with the model's own chat template.

A request is ``Request(key, messages, max_tokens, temperature, top_p, seed)`` whose ``messages`` are
chat messages with content parts ``{"type": "text", "text"}`` and ``{"type": "image", "image": bytes}``
(encoded image bytes). ``run(requests)`` yields ``(request, Reply)`` as replies arrive, so the caller
can store each one at once; a failed request yields a Reply with ``error`` set instead of raising.
"""

from __future__ import annotations

import base64
import os
import random
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field


class BackendError(ValueError):
    """The backend cannot be set up (no endpoint, no key, no model)."""


@dataclass
class Request:
    key: str
    messages: list[dict]
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0


@dataclass
class Reply:
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    attempts: int = 1
    extra: dict = field(default_factory=dict)


def image_mime(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:2] == b"BM":
        return "image/bmp"
    return "application/octet-stream"


def to_png_if_needed(data: bytes) -> bytes:
    """Chat APIs take PNG / JPEG / GIF / WebP; anything else is re-encoded as PNG."""
    if image_mime(data) in ("image/png", "image/jpeg", "image/gif", "image/webp"):
        return data
    import io

    from PIL import Image

    buf = io.BytesIO()
    with Image.open(io.BytesIO(data)) as im:
        im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    data = to_png_if_needed(data)
    return f"data:{image_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def openai_messages(messages: list[dict]) -> list[dict]:
    """Our parts -> OpenAI chat parts (images as base64 data URLs)."""
    out = []
    for m in messages:
        if isinstance(m["content"], str):
            out.append({"role": m["role"], "content": m["content"]})
            continue
        parts = []
        for p in m["content"]:
            if p["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": data_url(p["image"])}})
            else:
                parts.append({"type": "text", "text": p["text"]})
        out.append({"role": m["role"], "content": parts})
    return out


class OpenAIBackend:
    """OpenAI-compatible chat completions (see the module docstring)."""

    name = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout: float = 120.0, max_retries: int = 4, backoff: float = 1.0,
                 extra_body: dict | None = None):
        try:
            import openai
        except ImportError as e:  # a dependency of dopd-vlm; only a broken install lacks it
            raise BackendError("the openai backend needs the `openai` package (pip install openai)") from e
        if not model:
            raise BackendError("--model is required (the model name the endpoint serves)")
        key = os.environ.get(api_key_env)
        if not key:
            if base_url is None:
                raise BackendError(f"no API key: set the environment variable {api_key_env} (or --api-key-env NAME), "
                                   "or point --base-url at a local server")
            key = "EMPTY"  # local servers (vLLM, SGLang, transformers serve) accept any key
        if concurrency < 1:
            raise BackendError(f"--concurrency must be >= 1, got {concurrency}")
        self.openai = openai
        self.model, self.base_url = model, base_url
        self.concurrency, self.timeout, self.max_retries, self.backoff = concurrency, timeout, max_retries, backoff
        self.extra_body = extra_body or {}
        # the client's own retries are off: ours count attempts and back off with jitter
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)
        self.requests_sent = 0

    def describe(self) -> dict:
        """What the records' provenance names (never the key; credentials in the URL are removed)."""
        url = re.sub(r"//[^/@]*@", "//", self.base_url) if self.base_url else None
        return {"backend": self.name, "model": self.model, "base_url": url}

    def _retryable(self, e: Exception) -> bool:
        o = self.openai
        if isinstance(e, (o.APIConnectionError, o.APITimeoutError, o.RateLimitError, o.InternalServerError)):
            return True
        return isinstance(e, o.APIStatusError) and e.status_code >= 500

    def _one(self, req: Request) -> Reply:
        msgs = openai_messages(req.messages)
        kw = dict(model=self.model, messages=msgs, max_tokens=req.max_tokens, temperature=req.temperature,
                  top_p=req.top_p)
        if req.seed is not None:
            kw["seed"] = req.seed
        if self.extra_body:
            kw["extra_body"] = self.extra_body
        last = None
        for attempt in range(1, self.max_retries + 2):
            try:
                self.requests_sent += 1
                r = self.client.chat.completions.create(**kw)
            except Exception as e:  # noqa: BLE001 - classified below
                last = e
                if not self._retryable(e) or attempt > self.max_retries:
                    break
                time.sleep(self.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
                continue
            choice = r.choices[0] if r.choices else None
            usage = r.usage
            return Reply(text=(choice.message.content if choice else None) or "",
                         prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                         completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                         finish_reason=choice.finish_reason if choice else None, attempts=attempt)
        return Reply(text=None, error=f"{type(last).__name__}: {str(last)[:300]}", attempts=attempt)

    def run(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Reply]]:
        requests = list(requests)
        if not requests:
            return
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._one, r): r for r in requests}
            try:
                for fut in as_completed(futures):
                    yield futures[fut], fut.result()
            finally:
                for f in futures:
                    f.cancel()

    def close(self) -> None:
        self.client.close()


class LocalBackend:
    """Offline generation with a local checkpoint: vLLM ``LLM`` if installed, else transformers."""

    name = "local"

    def __init__(self, model: str, batch_size: int = 8, engine: str = "auto", dtype: str = "auto",
                 device: str | None = None, trust_remote_code: bool = False):
        if not model:
            raise BackendError("--model is required (a local checkpoint folder or Hub id)")
        self.model_path, self.batch_size = model, max(1, batch_size)
        self.trust_remote_code = trust_remote_code
        self.requests_sent = 0
        if engine == "auto":
            try:
                import vllm  # noqa: F401

                engine = "vllm"
            except ImportError:
                engine = "transformers"
        if engine not in ("vllm", "transformers"):
            raise BackendError(f"--local-engine must be auto, vllm or transformers, got {engine!r}")
        self.engine = engine
        if engine == "vllm":
            from vllm import LLM

            self.llm = LLM(model=model, dtype=dtype, trust_remote_code=trust_remote_code)
        else:
            import torch
            from transformers import (
                AutoConfig,
                AutoModelForCausalLM,
                AutoModelForImageTextToText,
                AutoProcessor,
            )

            self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            cfg = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
            td = getattr(torch, dtype) if dtype not in ("auto", None) else "auto"
            try:
                self.hf = AutoModelForImageTextToText.from_pretrained(model, dtype=td,
                                                                      trust_remote_code=trust_remote_code)
            except (ValueError, KeyError):
                self.hf = AutoModelForCausalLM.from_pretrained(model, dtype=td, trust_remote_code=trust_remote_code)
            self.hf.to(self.device).eval()
            self.processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
            self.model_type = cfg.model_type

    def describe(self) -> dict:
        return {"backend": self.name, "engine": self.engine, "model": self.model_path}

    def _vllm(self, batch: list[Request]) -> list[Reply]:
        from vllm import SamplingParams

        outs = self.llm.chat([openai_messages(r.messages) for r in batch],
                             [SamplingParams(max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p,
                                             seed=r.seed) for r in batch], use_tqdm=False)
        return [Reply(text=o.outputs[0].text, prompt_tokens=len(o.prompt_token_ids or []),
                      completion_tokens=len(o.outputs[0].token_ids), finish_reason=o.outputs[0].finish_reason)
                for o in outs]

    def _hf(self, batch: list[Request]) -> list[Reply]:
        import io

        import torch
        from PIL import Image

        replies = []
        for r in batch:  # one at a time: no padding-side subtleties across model families; tiny batches anyway
            images, msgs = [], []
            for m in r.messages:
                if isinstance(m["content"], str):
                    msgs.append(m)
                    continue
                parts = []
                for p in m["content"]:
                    if p["type"] == "image":
                        images.append(Image.open(io.BytesIO(p["image"])).convert("RGB"))
                        parts.append({"type": "image"})
                    else:
                        parts.append({"type": "text", "text": p["text"]})
                msgs.append({"role": m["role"], "content": parts})
            text = self.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            kw = {"images": images} if images else {}
            inputs = self.processor(text=[text], return_tensors="pt", **kw).to(self.device)
            gen = dict(max_new_tokens=r.max_tokens, do_sample=r.temperature > 0)
            if r.temperature > 0:
                gen.update(temperature=r.temperature, top_p=r.top_p)
                if r.seed is not None:
                    torch.manual_seed(r.seed)
            with torch.no_grad():
                out = self.hf.generate(**inputs, **gen)
            n_in = inputs["input_ids"].shape[1]
            new = out[0, n_in:]
            tok = getattr(self.processor, "tokenizer", self.processor)
            eos = self.hf.generation_config.eos_token_id
            eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
            finish = "stop" if len(new) and int(new[-1]) in eos else "length"
            replies.append(Reply(text=tok.decode(new, skip_special_tokens=True), prompt_tokens=int(n_in),
                                 completion_tokens=int(len(new)), finish_reason=finish))
        return replies

    def run(self, requests: Iterable[Request]) -> Iterator[tuple[Request, Reply]]:
        requests = list(requests)
        for i in range(0, len(requests), self.batch_size):
            batch = requests[i:i + self.batch_size]
            self.requests_sent += len(batch)
            try:
                replies = self._vllm(batch) if self.engine == "vllm" else self._hf(batch)
            except Exception as e:  # noqa: BLE001 - a failed batch is counted per request, not fatal
                replies = [Reply(text=None, error=f"{type(e).__name__}: {str(e)[:300]}") for _ in batch]
            yield from zip(batch, replies)

    def close(self) -> None:
        pass
