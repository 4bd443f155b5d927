"""Tiny, randomly initialised Qwen-family checkpoints built offline from configs.

`dopd-vlm tiny-models OUT --family qwen3_vl --size tiny` writes a real ``save_pretrained`` model
plus processor folder that every other command loads like any Hugging Face checkpoint. The
tokenizer is the committed byte-level BPE in ``dopd_vlm/assets/tokenizer`` (Qwen's pre-tokenizer
regex, Qwen's special tokens in Qwen's order); ``scripts/make_tokenizer.py`` regenerates it.
Recipe verified end to end with transformers 5.24.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
TOKENIZER_DIR = ASSETS / "tokenizer"

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3")
VL_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

# Qwen's pre-tokenizer regex (the one transformers' Qwen2Tokenizer uses)
QWEN_PAT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
            r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

# Special tokens in Qwen's order (real ids 151643 + i; here base_vocab + i)
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Non-special added tokens of the Qwen3 / Qwen3-VL tokenizers, in their order
QWEN3_EXTRA = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
               "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
               "<think>", "</think>"]

# Qwen2-VL / Qwen2.5-VL chat template (string content or lists of typed parts). The real
# Qwen3-VL template differs only in having no default system prompt; one template for all tiny
# families keeps the teacher's and the student's prompts identical.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# name: (text hidden, text layers, text intermediate, heads, kv heads,
#        vision hidden, vision depth, vision intermediate, vision heads)
SIZES = {
    "tiny": (64, 2, 128, 4, 2, 64, 2, 128, 4),  # ~0.6-0.9M parameters with the 4k vocabulary
    "tiny-h32": (64, 2, 128, 2, 1, 64, 2, 128, 2),  # as tiny, head size 32: the smallest vLLM's CPU attention takes
    "5m": (192, 4, 768, 4, 2, 128, 4, 512, 4),  # ~5M
    "30m": (384, 6, 1536, 6, 2, 384, 4, 1536, 6),  # ~30M
}

# Project decision: tiny processors default to small images so CPU tests stay fast;
# 84x84 = a 3x3 grid of 28-px cells = 9 merged visual tokens with patch 14 / merge 2.
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 256 * 28 * 28


# ----------------------------------------------------------------------------------- tokenizer
def scene_corpus() -> list[str]:
    """Sentences of the synthetic-scene tasks, repeated so each task word becomes one BPE token."""
    colours = "red green blue yellow purple cyan gray brown orange pink white black magenta".split()
    shapes = "circle circles square squares triangle triangles cross star diamond ellipse rectangle".split()
    words = (
        "How many objects are there Is there a an the of What color colour shape is Are more than fewer "
        "same number to in at row column yes no object objects Answer with single word letter number "
        "left right above below top bottom leftmost rightmost topmost bottommost middle center "
        "small large big size box boxes label labels scene contains caption image picture question "
        "hint hints step steps first then finally count exist exists query compare relation filter unique "
        "answer options Options choose correct which Which one zero one two three four five six seven "
        "eight nine ten and or not any all other each grid cell cells empty occupied at position"
    ).split()
    lines = []
    for w in colours + shapes + words:
        # answers start the assistant turn without a space: bare words must be single tokens too
        lines += [f" {w}", w, f"{w.capitalize()} ", f" {w}s"]
    sent = [
        "How many red objects are there?", "Is there a blue square?", "What color is the circle?",
        "What shape is the green object?", "Are there more red objects than blue objects?",
        "Is the red circle left of the blue square?", "Which object is the leftmost?",
        "What color is the object at row 1, column 2?", "Answer with a single word.",
        "Objects: row 1 column 2: red circle; row 3 column 1: blue square.",
    ]
    for c in colours:
        for s in shapes:
            sent.append(f"the {c} {s} is at row 1 column 2 and a {s} is {c}.")
    return (lines + sent) * 40


def default_corpus(max_files: int = 300) -> list[str]:
    """Deterministic offline corpus: Python stdlib sources (any English-ish text would do)."""
    import glob
    import sysconfig

    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))[:max_files]
    out = []
    for f in files:
        with open(f, encoding="utf-8", errors="ignore") as fh:
            out.append(fh.read())
    return out


def train_tokenizer(vocab_size: int = 4096, corpus: list[str] | None = None, qwen3: bool = True):
    """Train a byte-level BPE with Qwen's pre-tokenizer and wrap it as a ``Qwen2Tokenizer``.

    The added tokens follow Qwen's order (base vocabulary first, then the specials), so token-id
    arithmetic and ``<|image_pad|>`` handling behave as with the real 151k tokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    corpus = corpus if corpus is not None else scene_corpus() + default_corpus()
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    extra = QWEN_SPECIALS + (QWEN3_EXTRA if qwen3 else [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(extra), min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    model_json = json.loads(tok.to_str())["model"]
    vocab, merges = dict(model_json["vocab"]), model_json["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    base = len(vocab)
    vocab.update({t: base + i for i, t in enumerate(extra)})
    t = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIALS[1:],  # <|endoftext|> is the pad token
        model_max_length=32768,
    )
    if qwen3:
        t.add_tokens(QWEN3_EXTRA)  # non-special added tokens, as in Qwen3's tokenizer
    t.chat_template = QWEN_VL_CHAT_TEMPLATE
    return t


def load_tokenizer(path: str | os.PathLike | None = None):
    """The committed tiny tokenizer (or any Qwen2Tokenizer folder)."""
    from transformers import AutoTokenizer

    path = Path(path) if path is not None else TOKENIZER_DIR
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json in {path}; run scripts/make_tokenizer.py")
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.chat_template is None:
        tok.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tok


# ----------------------------------------------------------------------------------- processors
def build_processor(family: str, tokenizer, min_pixels: int = DEFAULT_MIN_PIXELS,
                    max_pixels: int = DEFAULT_MAX_PIXELS):
    """A real HF processor for a tiny VL family (the text-only family uses the tokenizer alone)."""
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    if family in ("qwen2_vl", "qwen2_5_vl"):
        ip = Qwen2VLImageProcessor(patch_size=14, temporal_patch_size=2, merge_size=2,
                                   min_pixels=min_pixels, max_pixels=max_pixels)
        vp = Qwen2VLVideoProcessor(patch_size=14, temporal_patch_size=2, merge_size=2)
        cls = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
    elif family == "qwen3_vl":
        ip = Qwen2VLImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2,
                                   min_pixels=min_pixels, max_pixels=max_pixels,
                                   image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        vp = Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2)
        cls = Qwen3VLProcessor
    else:
        raise ValueError(f"no processor for family {family!r}; VL families: {VL_FAMILIES}")
    return cls(image_processor=ip, tokenizer=tokenizer, video_processor=vp,
               chat_template=QWEN_VL_CHAT_TEMPLATE)


# ----------------------------------------------------------------------------------- models
def _mrope_section(head_dim: int, qwen3: bool = False) -> list[int]:
    """Scale the real mrope_section (head_dim 128: Qwen2/2.5-VL [16, 24, 24], Qwen3-VL
    [24, 20, 20]) to a tiny head_dim; the sections must sum to head_dim // 2."""
    half = head_dim // 2
    if qwen3:
        s = half * 20 // 64
        return [half - 2 * s, s, s]
    t = half * 16 // 64
    hw = (half - t) // 2
    return [half - 2 * hw, hw, hw]


def build_model(family: str, tokenizer, size: str = "tiny", seed: int = 0, layers: int | None = None,
                hidden: int | None = None):
    """A randomly initialised model of ``family`` and ``size`` (optionally overriding the text
    layers / hidden size, e.g. to make a deeper teacher)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen3Config,
        Qwen3ForCausalLM,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
    )

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {tuple(SIZES)}")
    torch.manual_seed(seed)
    h, n_layers, inter, nh, kvh, vh, vd, vinter, vnh = SIZES[size]
    if hidden is not None:
        h, inter = hidden, 2 * hidden
    n_layers = layers if layers is not None else n_layers
    hd = h // nh
    c = tokenizer.convert_tokens_to_ids
    eos = c("<|im_end|>")
    text = dict(vocab_size=len(tokenizer), hidden_size=h, intermediate_size=inter, num_hidden_layers=n_layers,
                num_attention_heads=nh, num_key_value_heads=kvh, max_position_embeddings=4096,
                bos_token_id=None, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    ids = dict(image_token_id=c("<|image_pad|>"), video_token_id=c("<|video_pad|>"),
               vision_start_token_id=c("<|vision_start|>"), vision_end_token_id=c("<|vision_end|>"))
    if family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=hd, tie_word_embeddings=True, **text))
    elif family == "qwen2_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(hd)}
        vision = dict(depth=vd, embed_dim=vh, hidden_size=h, num_heads=vnh, mlp_ratio=vinter // vh,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **ids))
    elif family == "qwen2_5_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(hd)}
        vision = dict(depth=vd, hidden_size=vh, intermediate_size=vinter, num_heads=vnh, out_hidden_size=h,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                      fullatt_block_indexes=[vd - 1])
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids))
    else:  # qwen3_vl
        text.update(head_dim=hd)
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                                   "mrope_section": _mrope_section(hd, qwen3=True), "mrope_interleaved": True}
        vision = dict(depth=vd, hidden_size=vh, intermediate_size=vinter, num_heads=vnh, out_hidden_size=h,
                      patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                      num_position_embeddings=256, deepstack_visual_indexes=[0])
        model = Qwen3VLForConditionalGeneration(
            Qwen3VLConfig(text_config=text, vision_config=vision, **ids, tie_word_embeddings=False))
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def write_tiny_checkpoint(out: str | os.PathLike, family: str = "qwen3_vl", size: str = "tiny", seed: int = 0,
                          min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS,
                          layers: int | None = None, hidden: int | None = None,
                          tokenizer_path: str | None = None) -> Path:
    """Write model (safetensors) + processor/tokenizer to ``out``; returns the folder."""
    out = Path(out)
    tok = load_tokenizer(tokenizer_path)
    model = build_model(family, tok, size=size, seed=seed, layers=layers, hidden=hidden)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if family in VL_FAMILIES:
        build_processor(family, tok, min_pixels=min_pixels, max_pixels=max_pixels).save_pretrained(out)
    else:
        tok.save_pretrained(out)
    return out


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("out", help="output folder (created)")
    parser.add_argument("--family", default="qwen3_vl", choices=FAMILIES)
    parser.add_argument("--size", default="tiny", choices=tuple(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=None, help="override the text layer count")
    parser.add_argument("--hidden", type=int, default=None, help="override the text hidden size")
    parser.add_argument("--min-pixels", type=int, default=DEFAULT_MIN_PIXELS)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the committed tiny one)")


def run(args) -> int:
    out = write_tiny_checkpoint(args.out, family=args.family, size=args.size, seed=args.seed,
                                min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                                layers=args.layers, hidden=args.hidden, tokenizer_path=args.tokenizer)
    print(f"wrote {args.family}/{args.size} checkpoint to {out}")
    return 0
