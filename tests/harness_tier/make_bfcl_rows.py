"""Writes a few BFCL-v3 rows in the schema of evalscope's ``bfcl_v3`` dataset (ModelScope
``AI-ModelScope/bfcl_v3``, split ``train``), built from the question and answer files that
bfcl-eval 2025.10.27.1 ships in its wheel. Run it with the harness Python (it imports bfcl_eval):

    .venv-harness/bin/python tests/harness_tier/make_bfcl_rows.py tests/harness_tier/data/bfcl_v3

The layout evalscope's adapter reads (``record_to_sample`` / ``preprocess_row`` in
evalscope/benchmarks/bfcl/v3/bfcl_v3_adapter.py, and the sample record in its
benchmarks/_meta/bfcl_v3.json): one row per question with ``id``, ``test_category`` and ``subset``
(BFCL-v3 names: ``simple``, not v4's ``simple_python``), ``language``, ``multi_turn``,
``involved_classes`` and, as JSON strings, ``functions`` (the function docs), ``tools`` (the same
docs as OpenAI tools, names with dots replaced and the language hint added, as BFCL gives them to
function-calling models), ``turns`` (the question's messages per turn), ``missed_functions``,
``initial_config`` and ``ground_truth`` (BFCL's possible answers).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

# (BFCL v4 file category, BFCL v3 subset, how many rows)
PICK = [("simple_python", "simple", 2), ("multiple", "multiple", 1), ("irrelevance", "irrelevance", 1),
        ("live_simple", "live_simple", 1)]
# no multi-turn row: its tool docs alone (~25k characters) overflow the tiny test model's 4096-token context


def rows() -> list[dict]:
    from bfcl_eval.constants.enums import ModelStyle
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
    from bfcl_eval.model_handler.utils import convert_to_tool
    from bfcl_eval.utils import load_dataset_entry, load_ground_truth_entry

    out = []
    for v4, v3, n in PICK:
        plain = {e["id"]: e for e in load_dataset_entry(v4, include_language_specific_hint=False)}
        hinted = load_dataset_entry(v4, include_language_specific_hint=True)[:n]
        try:
            truth = {e["id"]: e["ground_truth"] for e in load_ground_truth_entry(v4)}
        except FileNotFoundError:  # irrelevance: no possible answer, nothing should be called
            truth = {}
        for entry in hinted:
            multi = v3.startswith("multi_turn")
            missed = entry.get("missed_function", {})
            out.append({
                "id": entry["id"].replace(v4, v3, 1),
                "test_category": v3,
                "subset": v3,
                "language": "Python",
                "multi_turn": multi,
                "functions": json.dumps(plain[entry["id"]]["function"]),
                "tools": json.dumps(convert_to_tool(copy.deepcopy(entry["function"]), GORILLA_TO_OPENAPI,
                                                    ModelStyle.OPENAI_COMPLETIONS)),
                "turns": json.dumps(entry["question"]),
                "missed_functions": json.dumps(missed),
                "initial_config": json.dumps(entry.get("initial_config", {})),
                "involved_classes": entry.get("involved_classes", []),
                "ground_truth": json.dumps(truth.get(entry["id"], {})),
            })
    return out


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.jsonl", "w") as fh:
        for row in rows():
            fh.write(json.dumps(row) + "\n")
    print(f"wrote {out / 'train.jsonl'}")


if __name__ == "__main__":
    main(sys.argv[1])
