"""Shared code of the Qwen vision-language families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

What they share, as read from transformers 5.24's modelling code:
- the processor returns ``pixel_values`` as flattened patches of all images of the batch,
  concatenated (``prod(image_grid_thw[i])`` rows for image ``i``), plus ``image_grid_thw`` and
  ``mm_token_type_ids`` (0 text, 1 image, 2 video), which the model needs for M-RoPE;
- positions are 3-D (temporal, height, width) and come from ``model.model.get_rope_index``;
  ``generate`` caches ``model.model.rope_deltas`` for its decoding steps, which is stale for any
  later forward, so scoring computes the positions from its own tokens and passes them in.
"""

from __future__ import annotations

import torch

from dopd_vlm.adapters.base import Adapter, unwrap_model


class QwenVLAdapter(Adapter):
    token_extra_keys = ("mm_token_type_ids",)

    def placeholder_token_ids(self, processor):
        return [processor.image_token_id, processor.video_token_id]

    def split_vision(self, vision, images_per_sample):
        extra = set(vision) - {"pixel_values", "image_grid_thw"}
        if extra:
            raise NotImplementedError(f"{self.family}: only images are supported, got vision keys {sorted(extra)}")
        if not vision:
            return [{} for _ in images_per_sample]
        grid_N_3 = vision["image_grid_thw"]
        if grid_N_3.shape[0] != sum(images_per_sample):
            raise ValueError(f"{grid_N_3.shape[0]} image grids for {sum(images_per_sample)} images")
        rows_N = grid_N_3.prod(-1)
        parts, img, row = [], 0, 0
        for n in images_per_sample:
            if n == 0:
                parts.append({})
                continue
            n_rows = int(rows_N[img:img + n].sum())
            parts.append({"pixel_values": vision["pixel_values"][row:row + n_rows],
                          "image_grid_thw": grid_N_3[img:img + n]})
            img, row = img + n, row + n_rows
        return parts

    def scoring_inputs(self, model, input_ids, attention_mask, token_extras, vision):
        # 3-D M-RoPE positions from these tokens (never the rope_deltas cached by generate);
        # text positions are prepended as row 0, the layout generate uses ([4, B, L]).
        rope_3_B_L, _ = unwrap_model(model).model.get_rope_index(
            input_ids, mm_token_type_ids=token_extras["mm_token_type_ids"],
            image_grid_thw=vision.get("image_grid_thw"), attention_mask=attention_mask)
        text_B_L = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        position_ids = torch.cat([text_B_L[None], rope_3_B_L.to(text_B_L.device)], dim=0)
        return dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    **token_extras, **vision)
