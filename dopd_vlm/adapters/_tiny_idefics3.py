"""Tiny, randomly initialised Idefics3 (SmolVLM architecture) checkpoints, built offline from
configs with a real ``Idefics3Processor`` (tests-facing helper of the idefics3 adapter).

The tokenizer is the project's committed tiny byte-level BPE plus the tokens the Idefics3
processor needs (``<fake_token_around_image>``, ``<image>``, ``<end_of_utterance>``,
``<global-img>``, ``<row_i_col_j>``); the chat template is the one Idefics3 / SmolVLM ship
("User:<image>...<end_of_utterance>\\nAssistant:"). Vision: 32-pixel tiles of 8-pixel patches
with pixel shuffle 2, i.e. 4 ``<image>`` tokens per tile; image splitting on, so the image
resolution setting (``longest_edge``) changes the number of tiles and visual tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

# The chat template of HuggingFaceM4/Idefics3-8B-Llama3 and the SmolVLM checkpoints.
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
TILE = 32  # vision image_size = max_image_size (project decision: tiny tiles keep CPU tests fast)
PATCH = 8
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE_FACTOR**2  # 4 <image> tokens per tile
DEFAULT_LONGEST_EDGE = 2 * TILE  # up to 2 x 2 tiles + the global image


def build_tokenizer():
    from dopd_vlm.tiny import load_tokenizer

    tok = load_tokenizer()
    extra = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    extra += [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    tok.eos_token = "<end_of_utterance>"
    tok.chat_template = IDEFICS3_CHAT_TEMPLATE
    return tok


def build_processor(tokenizer, longest_edge: int = DEFAULT_LONGEST_EDGE):
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    ip = Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": longest_edge},
                                max_image_size={"longest_edge": TILE})
    return Idefics3Processor(image_processor=ip, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN,
                             chat_template=IDEFICS3_CHAT_TEMPLATE)


def build_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64):
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    torch.manual_seed(seed)
    c = tokenizer.convert_tokens_to_ids
    text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=4096, bos_token_id=None, eos_token_id=c("<end_of_utterance>"),
                pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-5)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  image_size=TILE, patch_size=PATCH)
    cfg = Idefics3Config(text_config=text, vision_config=vision, scale_factor=SCALE_FACTOR,
                         image_token_id=c("<image>"), tie_word_embeddings=False)
    model = Idefics3ForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = c("<end_of_utterance>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def write_tiny_idefics3_checkpoint(out: str | os.PathLike, seed: int = 0, longest_edge: int = DEFAULT_LONGEST_EDGE,
                                   layers: int = 2, hidden: int = 64) -> Path:
    """Model (safetensors) + processor in ``out``; returns the folder."""
    out = Path(out)
    tok = build_tokenizer()
    out.mkdir(parents=True, exist_ok=True)
    build_model(tok, seed=seed, layers=layers, hidden=hidden).save_pretrained(out)
    build_processor(tok, longest_edge=longest_edge).save_pretrained(out)
    return out
