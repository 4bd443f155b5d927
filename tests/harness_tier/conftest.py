"""The harness tier (``make test-harness``): `dopd-vlm eval` from the main .venv runs BFCL-v3 and
LiveCodeBench v5 through the real evalscope 1.14.1 (+ bfcl-eval) in .venv-harness against a tiny
checkpoint served by the real vLLM api_server from .venv-vllm, offline, on the rows in data/.

It needs those two virtualenvs, so plain ``make test`` does not collect it; ``make test-harness``
builds them and sets ``DOPD_RUN_HARNESS_TIER=1``, ``DOPD_HARNESS_PYTHON`` and
``DOPD_SERVE_PYTHON``. Missing interpreters then fail loudly instead of skipping.
"""

from __future__ import annotations

import os

collect_ignore_glob: list[str] = []
if os.environ.get("DOPD_RUN_HARNESS_TIER") != "1":
    collect_ignore_glob = ["test_*.py"]
