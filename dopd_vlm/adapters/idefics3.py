"""Idefics3 (the SmolVLM architecture): a SigLIP tower, pixel-shuffle connector, Llama decoder.

What differs from the Qwen families (transformers 5.24's Idefics3 code):
- ``pixel_values`` is ``[B, N, C, H, W]`` per sample (an image is split into tiles plus a global
  image; samples with fewer tiles are padded with all-zero images, which the model drops) with a
  matching ``pixel_attention_mask`` ``[B, N, H, W]``; so vision tensors split by batch row.
- Positions are plain 1-D (no M-RoPE, no ``rope_deltas``): the base adapter's recomputation from
  the attention mask applies.
- The chat template starts with the BOS text ``<|im_start|>`` itself and expects list content,
  so prompts are tokenised without added special tokens and string content becomes a text part.
Boxes: the family has no grounding convention; relative 0-1 floats (project decision).
"""

from __future__ import annotations

import torch

from dopd_vlm.adapters.base import Adapter


class Idefics3Adapter(Adapter):
    family = "idefics3"
    box_format = "rel01"  # project decision: no native box convention in Idefics3 / SmolVLM
    model_types = ("idefics3",)

    def model_class(self):
        from transformers import Idefics3ForConditionalGeneration

        return Idefics3ForConditionalGeneration

    def placeholder_token_ids(self, processor):
        return [processor.image_token_id]

    def normalize_messages(self, messages):
        return [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m["content"], str) else m
                for m in messages]

    def _run_processor(self, processor, texts, images_list):
        has_images = any(images_list)
        out = processor(text=texts, images=[list(imgs) for imgs in images_list] if has_images else None,
                        return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        return dict(out)

    def split_vision(self, vision, images_per_sample):
        extra = set(vision) - {"pixel_values", "pixel_attention_mask"}
        if extra:
            raise NotImplementedError(f"{self.family}: unexpected vision keys {sorted(extra)}")
        if not vision:
            return [{} for _ in images_per_sample]
        if vision["pixel_values"].shape[0] != len(images_per_sample):
            raise ValueError(f"pixel_values has {vision['pixel_values'].shape[0]} rows for "
                             f"{len(images_per_sample)} samples")
        parts = []
        for i, n in enumerate(images_per_sample):
            if n == 0:
                parts.append({})
                continue
            # drop this row's trailing padding tiles (all-zero images), so a sample cut out of a
            # batch equals the sample processed alone
            real_N = vision["pixel_values"][i].flatten(1).ne(0).any(-1)
            n_real = int(real_N.nonzero().max()) + 1
            parts.append({k: v[i:i + 1, :n_real] for k, v in vision.items()})
        return parts

    def cat_vision(self, parts):
        """Stack samples, padding the tile axis with all-zero images (the model's padding marker);
        a sample without images becomes all padding; no images at all gives no vision tensors."""
        real = [p for p in parts if p]
        if not real:
            return {}
        n_max = max(p["pixel_values"].shape[1] for p in real)
        ref = real[0]
        out = {}
        for key in ("pixel_values", "pixel_attention_mask"):
            rows = []
            for p in parts:
                if p:
                    t = p[key]
                    pad = n_max - t.shape[1]
                    if pad:
                        t = torch.cat([t, t.new_zeros((1, pad, *t.shape[2:]))], dim=1)
                else:
                    t = ref[key].new_zeros((1, n_max, *ref[key].shape[2:]))
                rows.append(t)
            out[key] = torch.cat(rows, dim=0)
        return out
