"""Response masks of rollouts (pure torch)."""

from __future__ import annotations

import torch

from dopd_vlm.rollout import response_mask


def test_mask_is_true_up_to_and_including_the_first_eos():
    ids = torch.tensor([[5, 6, 9, 0, 0],   # EOS 9 at 2, then padding 0
                        [5, 9, 9, 9, 9],   # pad == EOS after the end
                        [5, 6, 3, 8, 4],   # no EOS: truncated
                        [7, 5, 6, 8, 9]])  # second EOS id 7 at 0
    mask, truncated = response_mask(ids, eos_ids=[9, 7])
    assert mask.tolist() == [[True, True, True, False, False],
                             [True, True, False, False, False],
                             [True] * 5,
                             [True, False, False, False, False]]
    assert truncated.tolist() == [False, False, True, False]
