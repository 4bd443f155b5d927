"""Rollouts: G responses per prompt sampled from the student on the plain view.

DOPD samples ``y ~ pi_S(. | x)`` from the current student without privileged information
(docs/method.md Sec. 1, Sec. 6 step 1). All ``B = P*G`` samples come from one batched ``generate``
call on the prompt batch expanded G times, in prompt-major order: rows ``p*G .. p*G+G-1`` are
the G samples of prompt ``p`` (``ViewBatch.repeat_interleave`` gives the same order, so every
other view is expanded the same way).

Stable API::

    sample_rollouts(model, processor, adapter, batch, num_generations, max_new_tokens,
                    temperature=1.0, top_p=1.0, top_k=0, engine="hf", return_logprobs=False,
                    synced_gpus=False) -> Rollouts

``Rollouts.response_ids_B_R`` is padded with the tokenizer's pad id after the end;
``response_mask_B_R`` is true up to and including the first EOS (all true for a response cut at
``max_new_tokens``; ``truncated_B`` marks those). ``logprobs_B_R`` (when asked for) is the
log-probability of each sampled token under the model's own distribution at temperature 1,
sliced to the tokenizer vocabulary, as seen during generation (0 where the mask is false); it
equals the sampling distribution when temperature = 1, top_p = 1 and top_k = 0 (the defaults,
docs/method.md Sec. 6 [D]).

Sampling uses exactly the requested knobs: checkpoint generation defaults that would change the
distribution (repetition penalty, min-p, typical-p, ...) are neutralised, since the loss assumes
``y`` comes from ``pi_S`` itself (project decision). The one exception: the family's image/video
placeholder tokens are suppressed (a trained model never emits them, a random tiny one can, and
a response holding one cannot be scored; project decision).

Engine "vllm" runs the same interface on a ``vllm.LLM`` passed as ``model`` (optional dependency;
a clear error when it is not installed); ``dopd_vlm.vllm_rollout`` does the work, and training
builds its engine there (``rollout.engine=vllm``: weights pushed after every optimiser step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dopd_vlm.collate import ViewBatch

ENGINES = ("hf", "vllm")


@dataclass
class Rollouts:
    response_ids_B_R: torch.Tensor  # long, pad id after the end
    response_mask_B_R: torch.Tensor  # bool, true up to and including the first EOS
    truncated_B: torch.Tensor  # bool, no EOS within max_new_tokens
    num_generations: int
    logprobs_B_R: torch.Tensor | None = None  # float32, sampled-token log-probs at generation

    @property
    def prompt_index_B(self) -> torch.Tensor:
        """Prompt index ``p`` of each row (prompt-major order)."""
        B = self.response_ids_B_R.shape[0]
        return torch.arange(B, device=self.response_ids_B_R.device) // self.num_generations


def response_mask(response_ids_B_R: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask_B_R, truncated_B)``: true up to and including the first EOS of each row."""
    is_eos_B_R = torch.isin(response_ids_B_R, torch.tensor(eos_ids, device=response_ids_B_R.device))
    eos_before_B_R = (is_eos_B_R.long().cumsum(-1) - is_eos_B_R.long()) > 0
    return ~eos_before_B_R, ~is_eos_B_R.any(-1)


def sample_rollouts(model, processor, adapter, batch: ViewBatch, num_generations: int, max_new_tokens: int,
                    temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, engine: str = "hf",
                    return_logprobs: bool = False, synced_gpus: bool = False) -> Rollouts:
    """Sample ``num_generations`` responses for each of the P prompts of ``batch`` (see module doc).

    ``synced_gpus=True`` keeps ranks stepping together (needed under ZeRO-3, where ranks that stop
    early deadlock the others).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if num_generations < 1 or max_new_tokens < 1:
        raise ValueError(f"num_generations ({num_generations}) and max_new_tokens ({max_new_tokens}) must be >= 1")
    if temperature <= 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"sampling needs temperature > 0, 0 < top_p <= 1, top_k >= 0; got "
                         f"{temperature}, {top_p}, {top_k}")
    if engine == "vllm":
        return _sample_vllm(model, processor, adapter, batch, num_generations, max_new_tokens, temperature,
                            top_p, top_k, return_logprobs)
    return _sample_hf(model, processor, adapter, batch, num_generations, max_new_tokens, temperature,
                      top_p, top_k, return_logprobs, synced_gpus)


def _sample_hf(model, processor, adapter, batch, G, max_new_tokens, temperature, top_p, top_k,
               return_logprobs, synced_gpus) -> Rollouts:
    expanded = batch.repeat_interleave(G).to(model.device)
    eos_ids = adapter.eos_token_ids(model, processor)
    pad_id = batch.pad_token_id
    T = expanded.prompt_len
    # sample from the policy itself: no dropout (eval mode), restored afterwards
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(
                **expanded.model_inputs(), do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k,
                max_new_tokens=max_new_tokens, eos_token_id=eos_ids, pad_token_id=pad_id,
                # neutralise checkpoint defaults that would make y not a sample of pi_S
                repetition_penalty=1.0, no_repeat_ngram_size=0, typical_p=1.0, epsilon_cutoff=0.0,
                eta_cutoff=0.0, min_p=None, top_h=None, min_new_tokens=None, bad_words_ids=None,
                # image/video placeholders are never text: a response holding one could not be scored
                suppress_tokens=batch.placeholder_ids or None, begin_suppress_tokens=None, num_beams=1,
                num_return_sequences=1,
                output_logits=return_logprobs, return_dict_in_generate=True, synced_gpus=synced_gpus,
            )
    finally:
        model.train(was_training)
    response_ids_B_R = out.sequences[:, T:]
    mask_B_R, truncated_B = response_mask(response_ids_B_R, eos_ids)
    response_ids_B_R = response_ids_B_R.masked_fill(~mask_B_R, pad_id)
    logprobs_B_R = None
    if return_logprobs:
        logits_B_R_V = torch.stack(out.logits, dim=1)[..., :batch.vocab_size].float()
        logprobs_B_R = torch.log_softmax(logits_B_R_V, -1).gather(-1, response_ids_B_R[..., None]).squeeze(-1)
        logprobs_B_R = logprobs_B_R.masked_fill(~mask_B_R, 0.0)
    return Rollouts(response_ids_B_R, mask_B_R, truncated_B, G, logprobs_B_R)


def _sample_vllm(llm, processor, adapter, batch, G, max_new_tokens, temperature, top_p, top_k,
                 return_logprobs) -> Rollouts:
    from dopd_vlm import vllm_rollout

    vllm = vllm_rollout.import_vllm()
    if not isinstance(llm, vllm.LLM):
        raise TypeError(f"engine='vllm' samples from a vllm.LLM passed as `model`, got {type(llm).__name__}; "
                        "training builds one itself (rollout.engine=vllm)")
    return vllm_rollout.generate(llm, batch, G, max_new_tokens, temperature, top_p, top_k,
                                 _vllm_eos_ids(processor, adapter), return_logprobs)


def _vllm_eos_ids(processor, adapter) -> list[int]:
    """EOS ids from the tokenizer (a bare ``vllm.LLM`` comes with no HF generation config object);
    training passes the HF model's ``adapter.eos_token_ids`` instead."""
    tok = adapter.tokenizer(processor)
    if tok.eos_token_id is None:
        raise ValueError("the tokenizer defines no EOS token; vLLM sampling cannot stop")
    return [tok.eos_token_id]
