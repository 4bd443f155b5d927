"""The parts of the vLLM rollout path that need no vLLM (run in both virtualenvs, ``make test`` too):
Rollouts from token lists, the drift metric, the merged LoRA weights a push sends, the prompts
handed to vLLM, and the device-aware lean chunk sizes."""

from __future__ import annotations

import pytest
import torch

from dopd_vlm import vllm_rollout as vr
from dopd_vlm.lean import CPU_CHUNKS, chunk_sizes, for_device
from dopd_vlm.routing import RoutingConfig

EOS = 7
PAD = 0


def test_to_rollouts_matches_the_hf_conventions():
    rows = [[5, 6, EOS], [5, 5, 5, 5], [EOS], [9, EOS, 3]]  # the last: a token after EOS (vLLM never sends it)
    lps = [[-1.0, -2.0, -3.0], [-1.0] * 4, [-0.5], [-1.0, -2.0, -9.0]]
    r = vr.to_rollouts(rows, lps, [False, True, False, False], 2, PAD, [EOS])
    assert r.response_ids_B_R.tolist() == [[5, 6, EOS, PAD], [5, 5, 5, 5], [EOS, PAD, PAD, PAD], [9, EOS, PAD, PAD]]
    assert r.response_mask_B_R.tolist() == [[True, True, True, False], [True] * 4, [True, False, False, False],
                                            [True, True, False, False]]
    assert r.truncated_B.tolist() == [False, True, False, False]
    assert r.logprobs_B_R[3].tolist() == [-1.0, -2.0, 0.0, 0.0]  # 0 where the mask is false
    assert r.prompt_index_B.tolist() == [0, 0, 1, 1]


def test_logprob_mismatch():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    vllm_lp = torch.tensor([[-1.0, -2.0, -5.0], [-3.0, 0.0, 0.0]])
    trainer_lp = torch.tensor([[-1.1, -2.0, 0.0], [-2.7, 9.0, 9.0]])
    m = vr.logprob_mismatch(vllm_lp, trainer_lp, mask)
    assert m["rollout/logprob_abs_diff"] == pytest.approx((0.1 + 0.0 + 0.3) / 3, abs=1e-6)
    assert m["rollout/logprob_max_abs_diff"] == pytest.approx(0.3, abs=1e-6)
    expected = (torch.tensor(-0.1).exp() + torch.tensor(0.3).exp()) / 2
    assert m["rollout/seq_ratio_mean"] == pytest.approx(float(expected), rel=1e-5)
    assert vr.logprob_mismatch(vllm_lp, trainer_lp, torch.zeros_like(mask)) == {}


def test_token_logprobs_is_log_softmax_at_the_ids():
    logits = torch.randn(2, 3, 11)
    ids = torch.randint(0, 11, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    assert torch.allclose(vr.token_logprobs(logits, ids), expected, atol=1e-6)


def test_merged_state_dict_is_what_merge_and_unload_saves(tiny_ckpt):
    peft = pytest.importorskip("peft")
    from dopd_vlm.adapters import get_adapter

    path = tiny_ckpt("qwen3", size="tiny-h32", seed=4)
    model, _ = get_adapter(path).load(path)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # LoRA B starts at 0: give the adapters something to merge
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    merged = vr.merged_state_dict(lora.get_base_model())
    import copy

    reference = copy.deepcopy(lora).merge_and_unload().state_dict()
    assert set(merged) == set(reference)
    for k, v in reference.items():
        assert torch.allclose(merged[k], v, atol=1e-6), k
    base = model.state_dict()  # peft injected the LoRA layers into `model` itself
    assert all(not torch.equal(merged[k], base[k.replace("q_proj.", "q_proj.base_layer.")])
               for k in merged if k.endswith("q_proj.weight"))


def test_prompts_for_vllm(tiny_ckpt):
    from PIL import Image

    from dopd_vlm.adapters import get_adapter
    from dopd_vlm.collate import collate

    def rec(i, images):
        content = [{"type": "image"}] * len(images) + [{"type": "text", "text": f"Question {'x' * i}?"}]
        return {"id": f"t/default/train/{i}", "images": images, "prompt": [{"role": "user", "content": content}],
                "question": "", "answer": "", "privileged": {}, "meta": {}}

    text = tiny_ckpt("qwen3", size="tiny-h32")
    adapter = get_adapter(text)
    _, tok = adapter.load(text)
    batch = collate([rec(1, []), rec(6, [])], tok, adapter, views=("plain",))["plain"]
    prompts = vr.vllm_prompts(batch)
    assert [list(p) for p in prompts] == [["prompt_token_ids"]] * 2
    assert prompts[0]["prompt_token_ids"] == tok(batch.texts[0], add_special_tokens=False)["input_ids"]
    assert len(prompts[1]["prompt_token_ids"]) > len(prompts[0]["prompt_token_ids"])  # no left padding sent
    vr.check_prompt_ids([p["prompt_token_ids"] for p in prompts], [p["prompt_token_ids"] for p in prompts])
    with pytest.raises(vr.VLLMRolloutError, match="prompt 1: vLLM's prompt has"):
        vr.check_prompt_ids([p["prompt_token_ids"] for p in prompts], [prompts[0]["prompt_token_ids"]] * 2)

    vl = tiny_ckpt("qwen3_vl", size="tiny-h32")
    adapter = get_adapter(vl)
    _, proc = adapter.load(vl)
    im = Image.new("RGB", (84, 84), (200, 10, 10))
    batch = collate([rec(1, [im])], proc, adapter, views=("plain",))["plain"]
    (p,) = vr.vllm_prompts(batch)
    assert p["prompt"] == batch.texts[0] and p["multi_modal_data"]["image"][0] is batch.images[0][0]


def test_lean_chunk_sizes_by_device():
    default = RoutingConfig()
    assert (default.lean_chunk_size, default.lean_subchunk_size) == CPU_CHUNKS
    assert chunk_sizes(default, "cpu", 151_936) == CPU_CHUNKS  # CPU: today's sizes
    assert for_device(default, "cpu", 151_936) is default
    chunk, sub = chunk_sizes(default, "cuda", 151_936)  # GPU: larger blocks within the memory budget
    assert (chunk, sub) == (1024, 64)
    assert chunk * 151_936 * 4 * 3 <= 2 << 30 and sub * 151_936 * 4 * 15 <= 1 << 30
    assert chunk_sizes(default, "cuda", 4096)[0] == 8192  # capped
    explicit = RoutingConfig(lean_chunk_size=64, lean_subchunk_size=8)
    assert chunk_sizes(explicit, "cuda", 151_936) == (64, 8)  # a configured value is kept
