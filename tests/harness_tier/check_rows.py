"""Positive control for the tier's local rows, run with the harness Python: the benchmarks' own
checkers accept right answers on them, so a 0 from the tiny model is the model, not the rows.

- BFCL-v3: each row's first possible answer, as a function-calling model returns it, through
  bfcl-eval's ``ast_checker`` with the arguments evalscope's adapter passes (v4 category name,
  the row's ``functions``, ``underscore_to_dot`` model name); irrelevance rows have no call to make.
- LiveCodeBench: a right program per problem through evalscope's ``codegen_metrics`` (it runs the
  program on every public and private test), after the adapter's own ``transform`` of the row.

Prints one JSON object: {"bfcl": {id: valid}, "lcb": {question_id: pass@1}}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SOLUTIONS = {
    "dopd_t001": "n = int(input())\na = list(map(int, input().split()))\nprint(sum(x for x in a if x % 2 == 0))\n",
    "dopd_t002": ("from typing import List\nclass Solution:\n    def countVowelWords(self, words: List[str]) -> int:\n"
                  "        v = set('aeiou')\n        return sum(1 for w in words if w[0] in v and w[-1] in v)\n"),
    "dopd_t003": ("from typing import List\nclass Solution:\n    def maxGap(self, nums: List[int], k: int) -> int:\n"
                  "        return max(abs(nums[i] - nums[i + 1]) for i in range(min(k, len(nums) - 1)))\n"),
    "dopd_t004": "print(' '.join(reversed(input().split())))\n",
}


def _first_answer(ground_truth: list[dict]) -> list[dict]:
    """The first possible answer, as a function-calling model returns it for the row's ``tools``."""
    calls = []
    for call in ground_truth:
        (name, params), = call.items()
        args = {}
        for key, options in params.items():
            chosen = next((o for o in options if o != ""), None)  # "" marks an optional argument left out
            if chosen is not None:
                args[key] = chosen
        calls.append({name.replace(".", "_"): args})  # the tool name the model saw (dots replaced)
    return calls


def check_bfcl(folder: Path) -> dict[str, bool]:
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    from evalscope.benchmarks.bfcl.v3.bfcl_v3_adapter import BFCL_V3_TO_V4_SUBJECT_MAPPING
    from evalscope.benchmarks.bfcl.v3.utils import convert_language

    out = {}
    for line in (folder / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        truth = json.loads(row["ground_truth"])
        if not truth:  # irrelevance: the right answer is no call
            continue
        category = BFCL_V3_TO_V4_SUBJECT_MAPPING.get(row["test_category"], row["test_category"])
        result = ast_checker(json.loads(row["functions"]), _first_answer(truth), truth,
                             convert_language(row["language"]), category, "gpt-4o-2024-11-20-FC")
        out[row["id"]] = bool(result["valid"])
    return out


def check_lcb(folder: Path) -> dict[str, float]:
    import datasets
    from evalscope.benchmarks.live_code_bench.evaluate_utils import codegen_metrics
    from evalscope.benchmarks.live_code_bench.load_utils import transform

    rows = datasets.load_dataset(str(folder), name="release_v5", split="test")
    out = {}
    for row in rows:
        record = transform(dict(row))
        metrics, _, _ = codegen_metrics([{"input_output": record["evaluation_sample"]}],
                                        [[SOLUTIONS[row["question_id"]]]], k_list=[1], num_process_evaluate=1,
                                        timeout=6)
        out[row["question_id"]] = float(metrics["pass@1"])
    return out


if __name__ == "__main__":
    data = Path(sys.argv[1])
    print(json.dumps({"bfcl": check_bfcl(data / "bfcl_v3"), "lcb": check_lcb(data / "live_code_bench")}))
