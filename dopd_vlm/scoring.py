"""Scoring: one response, many contexts.

The same sampled response ids ``y`` are scored under each view (docs/method.md Sec. 6 step 2): the
view's own prompt tokens and images (its own processor, image resolution and chat template) are
followed by the identical response ids, never by re-tokenised text. Prompts are left padded, so
each view's response starts at its own column ``T`` and the logits that predict response token
``j`` sit at column ``T - 1 + j``. Positions are recomputed from the scoring tokens by the adapter
(no ``rope_deltas`` left behind by ``generate``).

Stable API::

    score(model, adapter, prompt_batch, response_ids_B_R, response_mask_B_R, output="logits")
        -> logits_B_R_V (in the model's dtype, sliced to the tokenizer vocabulary; upcast to
           float32 before any divergence)
           or hidden_B_R_H (final-norm output that the LM head consumes, for the memory-lean loss)
    lm_head_weight(model, adapter) -> weight_V_H (the model's full, possibly padded, LM head)
    logits_from_hidden(hidden_B_R_H, weight_V_H, vocab_size) -> logits_B_R_V (sliced)
    sampled_logprobs(logits_B_R_V, response_ids_B_R) -> logprobs_B_R (float32)
    assert_same_responses(reference_B_R, *others)
    check_tokenizer_compat(student_processor, student_adapter, teacher_processor, teacher_adapter)

``score`` calls the model's own top-level forward (``logits_to_keep`` = R), so a DDP-wrapped student
synchronises its gradients; ``output="hidden"`` reads the final norm through a forward hook.
``score`` runs under the caller's grad mode (wrap teacher / privileged-student calls in
``torch.no_grad()``). Rows of the output where ``response_mask_B_R`` is false are meaningless
(the response ids there are replaced by the pad id before scoring).

Shape legend: ``B`` rows, ``T`` prompt tokens, ``R`` response tokens, ``L = T + R - 1`` scored
tokens, ``V`` tokenizer vocabulary, ``H`` hidden size.
"""

from __future__ import annotations

import torch

from dopd_vlm.collate import ViewBatch

OUTPUTS = ("logits", "hidden")


class TokenizerMismatchError(ValueError):
    """Teacher and student cannot score the same token ids; the message says what differs."""


def assert_same_responses(reference_B_R: torch.Tensor, *others: torch.Tensor) -> None:
    """The response ids scored under every view must be one tensor's values (a silent mismatch
    would compare distributions over different tokens)."""
    for i, other in enumerate(others):
        if other.shape != reference_B_R.shape or not torch.equal(other.to(reference_B_R.device), reference_B_R):
            raise AssertionError(f"response ids of view {i + 1} differ from the reference view "
                                 f"(shapes {tuple(other.shape)} vs {tuple(reference_B_R.shape)})")


def build_scoring_inputs(model, adapter, prompt_batch: ViewBatch, response_ids_B_R: torch.Tensor):
    """Keyword arguments of the scoring forward: ``[prompt | response[:-1]]`` per row, the
    response part fully attended (as in ``generate``, where tokens after EOS are appended with
    attention 1; they only influence masked positions), positions recomputed."""
    B, R = response_ids_B_R.shape
    T = prompt_batch.prompt_len
    device = prompt_batch.input_ids_B_T.device
    resp_in_B_R1 = response_ids_B_R[:, :-1].to(device)
    input_ids_B_L = torch.cat([prompt_batch.input_ids_B_T, resp_in_B_R1], dim=1)
    attention_mask_B_L = torch.cat([prompt_batch.attention_mask_B_T,
                                    torch.ones_like(resp_in_B_R1, dtype=prompt_batch.attention_mask_B_T.dtype)], 1)
    # the response is text: per-token extras (e.g. modality type ids) are 0 there
    extras = {k: torch.cat([v, torch.zeros_like(resp_in_B_R1, dtype=v.dtype)], dim=1)
              for k, v in prompt_batch.token_extras.items()}
    return adapter.scoring_inputs(model, input_ids_B_L, attention_mask_B_L, extras, prompt_batch.vision), T


def score(model, adapter, prompt_batch: ViewBatch, response_ids_B_R: torch.Tensor,
          response_mask_B_R: torch.Tensor, output: str = "logits") -> torch.Tensor:
    """Response-only logits ``[B, R, V]`` (``V`` = tokenizer size) or final hidden states
    ``[B, R, H]`` of ``model`` for ``response_ids_B_R`` after the prompts of ``prompt_batch``."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if response_ids_B_R.ndim != 2 or response_ids_B_R.shape != response_mask_B_R.shape:
        raise ValueError(f"response ids {tuple(response_ids_B_R.shape)} and mask {tuple(response_mask_B_R.shape)} "
                         "must both be [B, R]")
    B, R = response_ids_B_R.shape
    if prompt_batch.num_samples != B:
        raise ValueError(f"prompt batch has {prompt_batch.num_samples} rows but there are {B} responses; "
                         "expand the prompts with batch.repeat_interleave(num_generations) first")
    if R < 1:
        raise ValueError("empty responses (R = 0)")
    response_ids_B_R = response_ids_B_R.masked_fill(~response_mask_B_R.bool(), prompt_batch.pad_token_id)
    valid_ids = response_ids_B_R[response_mask_B_R.bool()]
    if valid_ids.numel() and (int(valid_ids.min()) < 0 or int(valid_ids.max()) >= prompt_batch.vocab_size):
        raise ValueError(f"response ids outside the tokenizer vocabulary [0, {prompt_batch.vocab_size})")
    if prompt_batch.placeholder_ids and bool(torch.isin(valid_ids, torch.tensor(
            prompt_batch.placeholder_ids, device=valid_ids.device)).any()):
        raise ValueError(f"responses contain image/video placeholder ids {prompt_batch.placeholder_ids}; the model "
                         "would splice image features there (sample_rollouts suppresses them)")
    inputs, T = build_scoring_inputs(model, adapter, prompt_batch, response_ids_B_R)
    # the scored sequence has T + R - 1 columns; its last R columns (T-1+j predicts token j) are
    # the response positions
    if output == "hidden":
        return adapter.response_hidden(model, inputs, R)
    logits_B_R_Vm = adapter.response_logits(model, inputs, R)
    if logits_B_R_Vm.shape[-1] < prompt_batch.vocab_size:
        raise ValueError(f"model logits are {logits_B_R_Vm.shape[-1]} wide, fewer than the tokenizer's "
                         f"{prompt_batch.vocab_size} tokens")
    return logits_B_R_Vm[..., :prompt_batch.vocab_size]


def lm_head_weight(model, adapter) -> torch.Tensor:
    """``[V_model, H]``: the LM head the final hidden states are projected with."""
    return adapter.lm_head_weight(model)


def logits_from_hidden(hidden_B_R_H: torch.Tensor, weight_V_H: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Project to logits and slice to the tokenizer vocabulary: rows of an embedding matrix padded
    beyond the tokenizer (e.g. to a multiple of 128) are not tokens and must not take mass."""
    if weight_V_H.shape[0] < vocab_size:
        raise ValueError(f"LM head has {weight_V_H.shape[0]} rows, fewer than the tokenizer's {vocab_size}")
    return hidden_B_R_H @ weight_V_H[:vocab_size].T


def sampled_logprobs(logits_B_R_V: torch.Tensor, response_ids_B_R: torch.Tensor) -> torch.Tensor:
    """float32 log-probabilities of the response tokens under ``logits_B_R_V``."""
    logp_B_R_V = torch.log_softmax(logits_B_R_V.float(), dim=-1)
    return logp_B_R_V.gather(-1, response_ids_B_R.to(logits_B_R_V.device)[..., None]).squeeze(-1)


# --------------------------------------------------------------------------- compatibility checks
PROBE_QUESTION = "What color is the circle?"
PROBE_RESPONSE = "The circle is red.\nAnswer: red"


def _response_ids(processor, adapter, question: str, response: str) -> tuple[list[int], str]:
    """(token ids of the assistant response as the chat template renders it, generation header)."""
    tok = adapter.tokenizer(processor)
    user = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    prompt = adapter.render_chat(processor, user, add_generation_prompt=True)
    full = adapter.render_chat(processor, user + [{"role": "assistant", "content": [{"type": "text",
                                                                                     "text": response}]}],
                               add_generation_prompt=False)
    if not full.startswith(prompt):
        raise TokenizerMismatchError(
            f"{adapter.family}: the chat template renders the assistant turn differently from the generation "
            f"prompt (generation prompt ends {prompt[-40:]!r}, conversation continues {full[len(prompt) - 40:][:80]!r});"
            " responses sampled after the generation prompt would not match training-time rendering")
    ids_prompt = tok(prompt, add_special_tokens=False)["input_ids"]
    ids_full = tok(full, add_special_tokens=False)["input_ids"]
    if ids_full[:len(ids_prompt)] != ids_prompt:
        raise TokenizerMismatchError(f"{adapter.family}: the generation prompt does not tokenize to a prefix of the "
                                     "rendered conversation (a merge across the assistant header)")
    header = prompt[prompt.rindex(question) + len(question):]
    return ids_full[len(ids_prompt):], header


def check_tokenizer_compat(student_processor, student_adapter, teacher_processor, teacher_adapter,
                           probe_question: str = PROBE_QUESTION, probe_response: str = PROBE_RESPONSE) -> None:
    """Raise ``TokenizerMismatchError`` unless the teacher can score the student's token ids:
    identical vocabularies (token <-> id), the same EOS and pad tokens, the same assistant header
    after the question, and the same token ids for a response rendered by both chat templates
    (docs/method.md Sec. 1: a teacher "of the same tokenizer family"; docs/method.md §11 known traps)."""
    s_tok, t_tok = student_adapter.tokenizer(student_processor), teacher_adapter.tokenizer(teacher_processor)
    s_vocab, t_vocab = s_tok.get_vocab(), t_tok.get_vocab()
    if s_vocab != t_vocab:
        s_inv = {i: t for t, i in s_vocab.items()}
        t_inv = {i: t for t, i in t_vocab.items()}
        diff = [i for i in sorted(set(s_inv) | set(t_inv)) if s_inv.get(i) != t_inv.get(i)][:5]
        examples = ", ".join(f"id {i}: student {s_inv.get(i)!r} vs teacher {t_inv.get(i)!r}" for i in diff)
        raise TokenizerMismatchError(f"teacher and student tokenizers differ (sizes {len(s_vocab)} vs {len(t_vocab)}; "
                                     f"first differences: {examples}); the teacher cannot score the student's ids")
    for name, s_val, t_val in (("eos_token", s_tok.eos_token, t_tok.eos_token),
                               ("pad_token", s_tok.pad_token, t_tok.pad_token)):
        if s_val != t_val:
            raise TokenizerMismatchError(f"teacher and student {name} differ: {s_val!r} vs {t_val!r} "
                                         "(responses would end differently: runaway lengths)")
    s_ids, s_head = _response_ids(student_processor, student_adapter, probe_question, probe_response)
    t_ids, t_head = _response_ids(teacher_processor, teacher_adapter, probe_question, probe_response)
    if s_head != t_head:
        raise TokenizerMismatchError(f"chat templates differ after the user turn: student {s_head!r} vs teacher "
                                     f"{t_head!r}; the teacher would score the response in another context")
    if s_ids != t_ids:
        raise TokenizerMismatchError(f"chat templates tokenize the same response differently: student {s_ids} vs "
                                     f"teacher {t_ids}")
