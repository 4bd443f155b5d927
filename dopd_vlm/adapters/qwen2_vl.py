"""Qwen2-VL. Boxes: integers on a 0-1000 grid relative to the image (Qwen2-VL model card,
``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``)."""

from __future__ import annotations

from dopd_vlm.adapters._qwen_vl import QwenVLAdapter


class Qwen2VLAdapter(QwenVLAdapter):
    family = "qwen2_vl"
    box_format = "grid1000"
    model_types = ("qwen2_vl",)

    def model_class(self):
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration
