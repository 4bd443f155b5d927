"""Shared test setup: offline always, tiers, tiny checkpoints.

Tiers: tests/unit (torch only, fast), tests/integration (tiny models built from configs),
tests/slow (opt-in: ``--run-slow`` or ``DOPD_RUN_SLOW=1``).
"""

from __future__ import annotations

import os

# Offline is enforced for every test: no Hub calls can happen, even by accident.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("DOPD_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: pass --run-slow (or DOPD_RUN_SLOW=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """Factory: ``tiny_ckpt("qwen3_vl", size="tiny", seed=0, **kw)`` -> path of a saved checkpoint.

    Checkpoints are written once per session per argument set.
    """
    cache: dict[tuple, str] = {}

    def make(family: str = "qwen3_vl", size: str = "tiny", seed: int = 0, **kw) -> str:
        key = (family, size, seed, tuple(sorted(kw.items())))
        if key not in cache:
            from dopd_vlm.tiny import write_tiny_checkpoint

            name = "-".join(str(k) for k in key[:3]) + "".join(f"-{k}{v}" for k, v in key[3])
            out = tmp_path_factory.mktemp(name)
            write_tiny_checkpoint(out, family=family, size=size, seed=seed, **kw)
            cache[key] = str(out)
        return cache[key]

    return make
