"""Shared helpers of the views / adapters / rollout / scoring integration tests (no fixtures here:
``tiny_ckpt`` comes from tests/conftest.py)."""

from __future__ import annotations

import torch
from PIL import Image

QWEN_VL_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
VL_FAMILIES = QWEN_VL_FAMILIES + ("idefics3",)
ALL_FAMILIES = VL_FAMILIES + ("qwen3",)  # qwen3: the text-only causal-LM adapter
IMAGE_TOKEN = {"qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>", "qwen3_vl": "<|image_pad|>",
               "idefics3": "<image>"}
_IDEFICS3: dict[tuple, str] = {}


def ckpt_factory(tiny_ckpt, tmp_path_factory):
    """``make(family, seed=0, hi_res=False, layers=None)`` -> checkpoint folder (cached per session).
    ``hi_res``: a processor with a higher image-resolution setting (more visual tokens)."""

    def make(family: str, seed: int = 0, hi_res: bool = False, layers: int | None = None) -> str:
        if family == "idefics3":
            key = (seed, hi_res, layers)
            if key not in _IDEFICS3:
                from dopd_vlm.adapters._tiny_idefics3 import TILE, write_tiny_idefics3_checkpoint

                out = tmp_path_factory.mktemp(f"idefics3-{seed}-{hi_res}-{layers}")
                write_tiny_idefics3_checkpoint(out, seed=seed, longest_edge=(3 if hi_res else 2) * TILE,
                                               layers=layers or 2)
                _IDEFICS3[key] = str(out)
            return _IDEFICS3[key]
        kw = {"min_pixels": 128 * 128, "max_pixels": 160 * 160} if hi_res else {}
        if layers is not None:
            kw["layers"] = layers
        return tiny_ckpt(family, seed=seed, **kw)

    return make


def image(seed: int, w: int = 84, h: int = 84) -> Image.Image:
    """A small deterministic RGB image with some structure (random pixels)."""
    g = torch.Generator().manual_seed(seed)
    arr = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def record(i: int, family: str, privileged: dict | None = None, size=(84, 84),
           question: str = "How many red objects are there?") -> dict:
    """A docs/data.md record: one image + question for VL families, the question alone for text-only."""
    if family in VL_FAMILIES:
        content = [{"type": "image"}, {"type": "text", "text": question}]
        images = [image(i, *size)]
        meta = {"image_size": list(size)}
    else:
        content = [{"type": "text", "text": question}]
        images, meta = [], {}
    return {"id": f"test/default/train/{i}", "source": {"dataset": "test"}, "images": images,
            "prompt": [{"role": "user", "content": content}], "question": question, "choices": None,
            "answer": "two", "privileged": privileged or {}, "meta": meta}


REGIONS = {"regions": [{"bbox": [4, 8, 40, 60], "label": "red circle"},
                       {"bbox": [50, 10, 80, 30], "label": "blue square"}],
           "hints": ["count the red objects"]}


def kinds_for(family: str) -> list[str]:
    return ["regions", "hints"] if family in VL_FAMILIES else ["hints"]


def load(adapter_family_path: str):
    from dopd_vlm.adapters import get_adapter

    adapter = get_adapter(adapter_family_path)
    model, processor = adapter.load(adapter_family_path)
    return adapter, model, processor


def force_early_eos(model, n_ids: int = 600) -> None:
    """Make the first ``n_ids`` token ids end a response too, so short random-init rollouts stop
    early (about one step in seven) and the EOS / padding / mask path is exercised."""
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos)
    model.generation_config.eos_token_id = eos + [i for i in range(n_ids) if i not in eos]


def cached_loader(ckpt):
    """``get(family, **kw) -> load(ckpt(family, **kw))``, each checkpoint loaded once."""
    cache = {}

    def get(family, **kw):
        key = (family, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = load(ckpt(family, **kw))
        return cache[key]

    return get
