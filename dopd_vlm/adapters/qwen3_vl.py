"""Qwen3-VL. Boxes: relative coordinates on a 0-1000 grid (Qwen3-VL model card / cookbook:
"relative coordinates 0-1000"). ``mm_token_type_ids`` is mandatory in the model inputs
(transformers 5.x raises without it); the processor returns it."""

from __future__ import annotations

from dopd_vlm.adapters._qwen_vl import QwenVLAdapter


class Qwen3VLAdapter(QwenVLAdapter):
    family = "qwen3_vl"
    box_format = "grid1000"
    model_types = ("qwen3_vl",)

    def model_class(self):
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration
