"""The vLLM tier (``make test-vllm``): runs in its own virtualenv (.venv-vllm, built by
tests/vllm_tier/setup_venv.sh), since vLLM pins its own torch and transformers.

In the main virtualenv vLLM is absent and the test_vllm_*.py files are not collected (``make test`` stays
green without it); ``make test-vllm`` sets ``DOPD_REQUIRE_VLLM=1``, so there a missing vLLM fails
loudly instead of skipping.
"""

from __future__ import annotations

import importlib.util
import os

collect_ignore_glob: list[str] = []
_spec = importlib.util.find_spec("vllm")
if _spec is None or _spec.origin is None:  # absent, or only a namespace package made of some folder
    if os.environ.get("DOPD_REQUIRE_VLLM") == "1":
        raise RuntimeError("DOPD_REQUIRE_VLLM=1 but vLLM is not importable here; run `make test-vllm`, which "
                           "builds .venv-vllm")
    collect_ignore_glob = ["test_vllm_*.py"]  # test_engine_parts.py needs no vLLM: it runs here too
else:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache per engine: tiny models
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
