"""Writes a few LiveCodeBench code-generation problems in the schema of
``livecodebench/code_generation_lite`` (the rows evalscope 1.14.1's ``live_code_bench`` adapter
reads; its hub copy ``evalscope/livecodebench_code_generation_lite_parquet`` has one config per
release, split ``test``, in parquet files), as a local dataset folder in that layout, which evalscope
loads with ``local_path`` (any Python with pyarrow, e.g. the project's .venv):

    .venv/bin/python tests/harness_tier/make_lcb_rows.py tests/harness_tier/data/live_code_bench

Schema (``transform`` in evalscope/benchmarks/live_code_bench/load_utils.py): ``question_title``,
``question_content``, ``platform``, ``question_id``, ``contest_id``, ``contest_date`` (ISO),
``starter_code`` ("" for stdin programs), ``difficulty``, ``public_test_cases`` (JSON list of
``{input, output, testtype}``), ``private_test_cases`` (the same list, JSON, pickled, zlib-compressed,
base64: LiveCodeBench's encoding) and ``metadata`` (JSON; ``func_name`` for functional problems).
Every column is a string, as in the hub's parquet (JSON lines would not do: the loader reads an
ISO ``contest_date`` there as a timestamp and the adapter's date filter then fails). The problems
are written for this test (small, with their tests); one is dated before the v5
window (2024-10-01 .. 2025-02-01), so the suite's date filter must drop it.
"""

from __future__ import annotations

import base64
import json
import pickle
import sys
import zlib
from pathlib import Path


def _private(cases: list[dict]) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def _stdin(pairs):
    return [{"input": i, "output": o, "testtype": "stdin"} for i, o in pairs]


def _functional(pairs):
    return [{"input": i, "output": o, "testtype": "functional"} for i, o in pairs]


PROBLEMS = [
    dict(question_title="Sum of Evens", platform="atcoder", question_id="dopd_t001", contest_id="dopd_t",
         contest_date="2024-11-02T00:00:00", difficulty="easy", starter_code="",
         question_content=("You are given N integers A_1, ..., A_N. Print the sum of the even ones.\n\n"
                           "Input\n\nThe input is given from Standard Input in the following format:\n"
                           "N\nA_1 A_2 ... A_N\n\nOutput\n\nPrint the answer.\n\nConstraints\n\n"
                           "- 1 <= N <= 100\n- 1 <= A_i <= 1000\n\nSample Input 1\n\n4\n1 2 3 4\n\n"
                           "Sample Output 1\n\n6"),
         public=_stdin([("4\n1 2 3 4\n", "6\n")]),
         private=_stdin([("1\n7\n", "0\n"), ("5\n2 2 2 2 2\n", "10\n"), ("3\n1000 999 998\n", "1998\n")]),
         metadata={}),
    dict(question_title="Count Vowel Words", platform="leetcode", question_id="dopd_t002", contest_id="dopd_t",
         contest_date="2024-12-14T00:00:00", difficulty="easy",
         starter_code="class Solution:\n    def countVowelWords(self, words: List[str]) -> int:\n        ",
         question_content=("You are given a list of lowercase strings words. Return the number of strings "
                           "that start and end with a vowel ('a', 'e', 'i', 'o' or 'u').\n\nExample 1:\n\n"
                           "Input: words = [\"are\",\"amy\",\"u\"]\nOutput: 2\n\nConstraints:\n\n"
                           "1 <= words.length <= 1000\n1 <= words[i].length <= 10"),
         public=_functional([('["are", "amy", "u"]', "2")]),
         private=_functional([('["hey", "aeo", "mu", "ooo", "artro"]', "3"), ('["b"]', "0")]),
         metadata={"func_name": "countVowelWords"}),
    dict(question_title="Max Adjacent Gap", platform="leetcode", question_id="dopd_t003", contest_id="dopd_t",
         contest_date="2025-01-18T00:00:00", difficulty="medium",
         starter_code="class Solution:\n    def maxGap(self, nums: List[int], k: int) -> int:\n        ",
         question_content=("Given an integer array nums and an integer k, return the largest value of "
                           "|nums[i] - nums[i + 1]| over indices i < k (0-indexed, i + 1 < len(nums)).\n\n"
                           "Example 1:\n\nInput: nums = [1,5,2,9], k = 2\nOutput: 4\n\nConstraints:\n\n"
                           "2 <= nums.length <= 100\n1 <= k <= nums.length - 1"),
         public=_functional([("[1, 5, 2, 9]\n2", "4")]),
         private=_functional([("[1, 5, 2, 9]\n3", "7"), ("[3, 3]\n1", "0")]),
         metadata={"func_name": "maxGap"}),
    dict(question_title="Reverse Words", platform="atcoder", question_id="dopd_t004", contest_id="dopd_t",
         contest_date="2024-05-04T00:00:00", difficulty="easy", starter_code="",  # before the v5 window
         question_content=("Given a line of words separated by single spaces, print them in reverse order.\n\n"
                           "Sample Input 1\n\nab cd ef\n\nSample Output 1\n\nef cd ab"),
         public=_stdin([("ab cd ef\n", "ef cd ab\n")]),
         private=_stdin([("x\n", "x\n")]),
         metadata={}),
]

README = """---
configs:
- config_name: release_v5
  data_files:
  - split: test
    path: release_v5/test.parquet
---
LiveCodeBench code_generation_lite rows written for dopd-vlm's harness tests (tests/harness_tier/make_lcb_rows.py).
"""


def main(folder: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(folder)
    (out / "release_v5").mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(README)
    rows = []
    for p in PROBLEMS:
        row = {k: v for k, v in p.items() if k not in ("public", "private", "metadata")}
        row.update(public_test_cases=json.dumps(p["public"]), private_test_cases=_private(p["private"]),
                   metadata=json.dumps(p["metadata"]))
        rows.append(row)
    columns = list(rows[0])
    table = pa.table({c: pa.array([r[c] for r in rows], type=pa.string()) for c in columns})
    pq.write_table(table, out / "release_v5" / "test.parquet")
    print(f"wrote {out / 'release_v5' / 'test.parquet'} ({len(rows)} problems)")


if __name__ == "__main__":
    main(sys.argv[1])
