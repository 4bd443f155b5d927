"""ViewBatch invariants (pure torch, a stand-in adapter without vision tensors)."""

from __future__ import annotations

import pytest
import torch

from dopd_vlm.collate import ViewBatch


class _TextAdapter:
    family = "text"

    def split_vision(self, vision, images_per_sample):
        return [{} for _ in images_per_sample]

    def cat_vision(self, parts):
        return {}


def _batch():
    ids = torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9], [1, 2, 3, 4]])
    mask = (torch.arange(4)[None] >= torch.tensor([[2], [1], [0]])).long()
    return ViewBatch(ids, mask, {"type_ids": torch.zeros_like(ids)}, {}, [0, 0, 0], _TextAdapter(),
                     pad_token_id=0, vocab_size=10)


def test_select_keeps_order_and_trims_shared_left_padding():
    b = _batch().select([1, 0])
    assert b.input_ids_B_T.tolist() == [[7, 8, 9], [0, 5, 6]]
    assert b.attention_mask_B_T.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert b.token_extras["type_ids"].shape == (2, 3)


def test_repeat_interleave_is_prompt_major():
    b = _batch().repeat_interleave(2)
    assert b.num_samples == 6
    assert b.input_ids_B_T[:, -1].tolist() == [6, 6, 9, 9, 4, 4]
    with pytest.raises(ValueError, match="repeats"):
        _batch().repeat_interleave(0)
    with pytest.raises(IndexError):
        _batch().select([3])


def test_right_padded_or_misshaped_batches_are_refused():
    ids = torch.tensor([[5, 6, 0]])
    with pytest.raises(ValueError, match="left padded"):
        ViewBatch(ids, torch.tensor([[1, 1, 0]]), {}, {}, [0], _TextAdapter(), 0, 10)
    with pytest.raises(ValueError, match="token extra"):
        ViewBatch(ids, torch.ones(1, 3, dtype=torch.long), {"x": torch.zeros(1, 2)}, {}, [0], _TextAdapter(), 0, 10)
