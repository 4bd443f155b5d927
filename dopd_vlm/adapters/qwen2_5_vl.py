"""Qwen2.5-VL. Boxes: absolute pixel coordinates of the *resized* model input (Qwen2.5-VL
technical report, Sec. 2.2.1: grounding uses the actual image scale), i.e. of the
``smart_resize`` output for the processor's min/max pixels; a teacher and a student with different
resolution settings therefore see different numbers for the same box."""

from __future__ import annotations

from dopd_vlm.adapters._qwen_vl import QwenVLAdapter
from dopd_vlm.adapters.base import AdapterError


class Qwen2_5_VLAdapter(QwenVLAdapter):
    family = "qwen2_5_vl"
    box_format = "abs_xyxy"
    model_types = ("qwen2_5_vl",)

    def model_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def box_target_size(self, processor, image_size):
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        if processor is None:
            raise AdapterError("qwen2_5_vl boxes are absolute pixels of the resized input: pass the processor "
                               "(render_views(..., processor=...)) so its min/max pixels are known")
        ip = processor.image_processor
        w, h = image_size
        h_new, w_new = smart_resize(h, w, factor=ip.patch_size * ip.merge_size,
                                    min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"])
        return (w_new, h_new)
