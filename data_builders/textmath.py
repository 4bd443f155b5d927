"""Text-only math (the LLM case): question, final answer, worked solution -> step-wise hints.

- ``gsm8k``: ``openai/gsm8k`` (config ``main``): ``question``, ``answer`` (solution, then
  ``#### final``; calculator annotations ``<<...>>`` are removed from hints).
- ``hendrycks_math``: ``EleutherAI/hendrycks_math`` (configs per subject, e.g. ``algebra``):
  ``problem``, ``solution`` (final answer in the last ``\\boxed{}``), ``level``, ``type``.
- ``openr1_math``: ``open-r1/OpenR1-Math-220k``: ``problem``, ``solution``, ``answer``, ``uuid``.
- ``dapo_math``: ``BytedTsinghua-SIA/DAPO-Math-17k``: ``prompt`` (chat messages wrapping the
  problem in an instruction), ``reward_model`` ({ground_truth, style}); the problem is cut out of
  the instruction and duplicates (the file repeats each problem many times) are skipped.

Privileged (DOPD Table 4): ``hints`` = step-wise hints *without execution*, the paper's best LLM
privilege (71.3 vs 63.1 with execution): the solution's steps, one per line, with every computed
result removed (``hints_without_execution``: ``48/2 = <<48/2=24>>24`` becomes ``48/2``, and a later
use of 24 becomes ``(48/2)``) and never the final answer; ``hints_exec`` = the paper's step-wise
hints *with execution* (the steps with their results, calculator annotations stripped, the
concluding step dropped); ``solution`` and ``rationale`` are kept for other ablations. Render them
with ``--privileged hints`` or ``--privileged hints_exec``.
"""

from __future__ import annotations

import re

from dopd_vlm.privileged import hints_from_trace, split_steps

from .build import SkipRow
from .parsing import gsm8k_answer, last_boxed
from .records import RecordError, make_record
from .sources import SourceBuilder

INSTRUCTION = "Put the final answer in \\boxed{}."  # project decision: the usual math answer format

# ------------------------------------------------------------------ hints without execution
# GSM8K calculator annotation with the visible expression before it: "48/2 = <<48/2=24>>24"
_ANNOTATED = re.compile(r"(?P<vis>[\d$.,()+\-*/x×÷%^ ]*?)\s*=\s*\$?<<(?P<expr>[^=<>]+)=(?P<res>[^<>]+)>>"
                        r"\s*(?P<shown>\$?-?\d[\d,]*(?:\.\d+)?%?)?")
_OPS = r"(?:[+\-*/×÷^]|\\cdot|\\times|\\div|\\frac)"
# an unannotated computation "3 * 4 = 12" / "2 \cdot 3 = 6": an operator left of "=", a bare number right of it
_EQUATION = re.compile(r"(?P<lhs>(?:\d[\d,.]*|\(|\))(?:[^=\n]*?" + _OPS + r"[^=\n]*?)?(?:\d|\)))\s*=\s*"
                       r"\$?(?P<res>-?\d[\d,]*(?:\.\d+)?)(?![\d.]*\s*[+\-*/×÷^])"
                       # "= 16\pi", "= 3x", "= 2(": a coefficient of a symbolic result, not a bare number
                       r"(?![\d.,]*(?:\\(?!(?:text|mbox|mathrm|quad|qquad)\b)[A-Za-z]|[A-Za-z(]))")
# a step that restates the conclusion ("The answer is $\boxed{(2 \cdot 3)}$."): no hint, the answer itself
_CONCLUSION = re.compile(r"\\boxed\s*\{|\b(?:the|final)\s+answer\s+is\b|^\s*####", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])")


def _norm_number(text: str) -> str:
    t = text.strip().lstrip("$").rstrip("%").replace(",", "")
    try:
        v = float(t)
    except ValueError:
        return t
    return str(int(v)) if v == int(v) else repr(v)


def hints_without_execution(steps: list[str], question: str = "", answer: str | None = None) -> list[str]:
    """Step-wise hints *without execution* (DOPD Table 4): each step says what to compute, never what
    comes out. Computed results (calculator annotations ``<<expr=result>>`` and unannotated
    ``a op b = result``) are removed; a later use of a result is replaced by its expression in
    parentheses; numbers that the question itself gives are left alone. One step per item; the final
    answer is then dropped or masked as in ``hints_from_trace``.
    """
    given = {_norm_number(m.group()) for m in _NUMBER.finditer(question or "")}
    results: dict[str, str] = {}  # normalised computed result -> its unevaluated expression

    def substitute(expr: str) -> str:
        def one(m):
            n = _norm_number(m.group())
            return f"({results[n]})" if n in results and n not in given else m.group()
        return _NUMBER.sub(one, expr)

    out = []
    for step in steps:
        slots: list[str] = []

        def keep(expr: str, res: str, slots: list[str] = slots) -> str:
            e = substitute(expr.strip())
            if _norm_number(res) not in given:
                results.setdefault(_norm_number(res), e)
            slots.append(e)
            return "\x00" + "abcdefghijklmnopqrstuvwxyz"[(len(slots) - 1) % 26] + "\x00"

        s = _ANNOTATED.sub(lambda m: " " + keep(m["expr"], m["res"]), step)
        s = _EQUATION.sub(lambda m: keep(m["lhs"], m["res"]), s)
        s = _NUMBER.sub(lambda m: substitute(m.group()), s)  # remaining uses of earlier results
        for k, e in enumerate(slots):
            s = s.replace("\x00" + "abcdefghijklmnopqrstuvwxyz"[k % 26] + "\x00", e)
        s = re.sub(r"\s+([.,;:!?])", r"\1", re.sub(r"[ \t]+", " ", s)).strip()
        if s:
            out.append(s)
    if len(out) > 1 and _CONCLUSION.search(out[-1]):
        out.pop()
    return hints_from_trace(out, answer)


def _math_record(ctx, native_id, question: str, answer: str | None, solution: str | None, meta: dict) -> dict:
    if answer is None or not str(answer).strip():
        raise SkipRow("no final answer")
    answer = str(answer).strip()
    steps = split_steps(solution) if solution else []
    return make_record(id=ctx.record_id(native_id), source=ctx.source(), images=[], question=question.strip(),
                       answer=answer, instruction=INSTRUCTION,
                       privileged={"solution": solution, "rationale": steps,
                                   "hints": hints_without_execution(steps, question, answer),
                                   "hints_exec": hints_from_trace(steps, answer)},
                       meta=meta)


def convert_gsm8k(row, ctx, idx):
    try:
        solution, final = gsm8k_answer(row["answer"])
    except ValueError as e:
        raise RecordError(ctx.record_id(idx), "answer", str(e)) from e
    return _math_record(ctx, idx, row["question"], final, solution, {})


def convert_math(row, ctx, idx):
    return _math_record(ctx, idx, row["problem"], last_boxed(row["solution"]), row["solution"],
                        {"level": row.get("level"), "type": row.get("type")})


def convert_openr1(row, ctx, idx):
    return _math_record(ctx, row["uuid"] if "uuid" in row else idx, row["problem"], row["answer"], row["solution"],
                        {"problem_type": row.get("problem_type"), "origin": row.get("source")})


_DAPO_HEAD = re.compile(r"^.*?where \$Answer is the answer to the problem\.\s*", re.DOTALL)
_DAPO_TAIL = re.compile(r'\s*Remember to put your answer on its own line after "Answer:"\.?\s*$')


def dapo_problem(content: str) -> str:
    return _DAPO_TAIL.sub("", _DAPO_HEAD.sub("", content, count=1)).strip()


def convert_dapo(row, ctx, idx):
    users = [m["content"] for m in row["prompt"] if m["role"] == "user"]
    if not users:
        raise RecordError(ctx.record_id(idx), "prompt", "no user message")
    native = row["extra_info"]["index"] if "extra_info" in row and row["extra_info"] else idx
    return _math_record(ctx, native, dapo_problem(users[0]), row["reward_model"]["ground_truth"], None,
                        {"origin": row.get("data_source")})


def normalized_question(q: str) -> str:
    return " ".join(q.lower().split())


GSM8K = SourceBuilder(name="gsm8k", hub_ids=("openai/gsm8k",), required=("question", "answer"), convert=convert_gsm8k,
                      default_kinds=("hints",), default_split="train", default_config="main",
                      doc="GSM8K: hints from the worked solution")
HENDRYCKS_MATH = SourceBuilder(name="hendrycks_math", hub_ids=("EleutherAI/hendrycks_math",),
                               required=("problem", "solution"), convert=convert_math, default_kinds=("hints",),
                               default_split="train", default_config="algebra", doc="MATH (per-subject configs)")
OPENR1_MATH = SourceBuilder(name="openr1_math", hub_ids=("open-r1/OpenR1-Math-220k",),
                            required=("problem", "solution", "answer"), convert=convert_openr1,
                            default_kinds=("hints",), default_split="train", doc="OpenR1-Math-220k")
DAPO_MATH = SourceBuilder(name="dapo_math", hub_ids=("BytedTsinghua-SIA/DAPO-Math-17k",),
                          required=("prompt", "reward_model"), convert=convert_dapo, default_kinds=(),
                          default_split="train", dedupe_key=normalized_question,
                          doc="DAPO-Math-17k: problems de-duplicated; no solutions")
