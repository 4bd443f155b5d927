"""Scoring goes through the model's top-level forward, so a DDP-wrapped student synchronises its
gradients (2 CPU processes over gloo)."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = os.path.dirname(__file__)


def _worker(rank: int, world: int, path: str, port: int, out: str) -> None:
    sys.path.insert(0, HERE)
    from _views_helpers import load, record

    from dopd_vlm.collate import collate
    from dopd_vlm.scoring import score

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    adapter, model, processor = load(path)
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    batch = collate([record(rank, "qwen3_vl", size=(56 + 28 * rank, 84))], processor, adapter)["plain"]
    ids = torch.tensor([[5 + rank, 6, 7, 8]])
    logits = score(ddp, adapter, batch, ids, torch.ones_like(ids, dtype=torch.bool))
    logits.logsumexp(-1).mean().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.save(grads, os.path.join(out, f"grad{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_student_gradients_are_synchronised(tiny_ckpt, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, tiny_ckpt("qwen3_vl"), port, str(tmp_path)), nprocs=2, join=True)
    g0, g1 = (torch.load(tmp_path / f"grad{r}.pt") for r in range(2))
    assert g0.abs().sum() > 0
    torch.testing.assert_close(g0, g1, atol=1e-6, rtol=0)  # different data, all-reduced gradients


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
