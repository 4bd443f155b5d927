"""Build the synthetic-scenes dataset (``dopd-vlm build synthetic_scenes``; Python: ``build_synthetic``).

Writes ``OUT/`` = a ``datasets`` DatasetDict folder (train / test, images embedded) plus
``OUT/clevr/`` (CLEVR v1.0 layout: images, scenes and questions JSON) and ``build_summary.json``.
A test item whose image and question equal a train item's is skipped (no train/test overlap).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import scenes as S
from .build import Summary, apply_leak_policy, finalize_record, records_dataset, write_outputs

# Project decision: split sizes when none are given (1000 train scenes build in a few seconds).
DEFAULT_N = {"train": 1000, "test": 200}


def _signature(scene: dict, question: dict) -> str:
    objs = [(o["shape"], o["color"], o["size"], tuple(o["bbox"])) for o in scene["objects"]]
    return json.dumps([objs, question["question"]])


def synthetic_records(split: str, n: int, seed: int = 0, layout: str = "grid", families=S.DEFAULT_FAMILIES,
                      exclude: set[str] | None = None) -> tuple[list[tuple[dict, dict, object]], list[dict], set[str]]:
    """-> (items kept, skipped [{index, id, category, reason}], signatures of the kept items)."""
    kept, skipped, sigs = [], [], set()
    idx = 0
    while len(kept) < n:
        for scene, q, im in S.generate(n - len(kept), seed, split, layout, families, start=idx):
            sig = _signature(scene, q)
            if exclude and sig in exclude:
                skipped.append({"index": q["image_index"], "id": f"{S.SOURCE_NAME}/{layout}/{split}/{q['image_index']:06d}",
                                "category": "duplicate of a train item", "reason": "same image and question as a train item"})
            else:
                kept.append((scene, q, im))
                sigs.add(sig)
            idx = q["image_index"] + 1
    return kept, skipped, sigs


def build_synthetic(out_dir: str | os.PathLike, n_train: int | None = DEFAULT_N["train"],
                    n_test: int | None = DEFAULT_N["test"], seed: int = 0, layout: str = "grid",
                    privileged_kinds=S.DEFAULT_KINDS, families=S.DEFAULT_FAMILIES, leak_policy: str = "keep",
                    templates: dict | None = None, clevr: bool = True, parquet: bool = False, jsonl: bool = False,
                    overwrite: bool = False, quiet: bool = False, caption_style: str = "cells",
                    n_val: int | None = 0):
    """Generate, write and reload the dataset -> ``datasets.DatasetDict`` (splits with n > 0).

    ``caption_style``: ``cells`` or ``slots`` (grid layout; see ``scenes.caption``).
    ``n_val``: size of an optional ``val`` split (its own generator stream, no item equal to a train
    item), for choosing settings without looking at the test split.
    ``leak_policy`` defaults to ``keep`` (project decision): labels of boxes necessarily name the
    colours and shapes that perception questions ask about, and boxes with labels are the paper's
    best VLM privilege (Table 5); the flag ``meta.privileged_states_answer`` and the counts in
    ``build_summary.json`` still say where the privileged text states the answer.
    """
    from datasets import load_from_disk

    kinds = list(privileged_kinds)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    splits, summaries, raw = {}, [], {}
    train_sigs: set[str] = set()
    for split in ("train", "val", "test"):
        n = sizes[split]
        if not n:
            continue
        items, skipped, sigs = synthetic_records(split, n, seed, layout, families,
                                                 exclude=train_sigs if split != "train" else None)
        if split == "train":
            train_sigs = sigs
        from tqdm.auto import tqdm

        recs, leaks, encoded = [], [], []
        # disable only when quiet: otherwise TQDM_DISABLE (set by the CLI unless --verbose) decides
        for scene, q, im in tqdm(items, desc=f"synthetic_scenes {split}", **({"disable": True} if quiet else {})):
            rec, leak = finalize_record(S.scene_record(scene, q, im, seed, caption_style), kinds, templates)
            recs.append(rec)
            leaks.append(leak)
            encoded.append((scene, q, rec["images"][0]["bytes"]))  # reused for the CLEVR files
        recs, leak_counts = apply_leak_policy(recs, leaks, leak_policy)
        from dopd_vlm.privilege_check import empty_privilege_counts

        summ = Summary(split=split, rows_in=len(items) + len(skipped), kept=len(recs), skipped=skipped, leak=leak_counts,
                       privileged_empty=empty_privilege_counts(recs, kinds))
        summaries.append(summ)
        splits[split] = records_dataset(recs)
        raw[split] = encoded
        if not quiet:
            print(summ.text())
    if not splits:
        raise ValueError("nothing to build: n_train and n_test are both 0")

    def write_clevr(tmp: Path) -> None:
        if clevr:
            for split, items in raw.items():
                S.write_clevr(tmp / "clevr", split, items, seed)

    out = write_outputs(splits, out_dir, summaries, parquet=parquet, jsonl=jsonl, overwrite=overwrite,
                        extra={"builder": "synthetic_scenes", "layout": layout, "seed": seed, "caption_style": caption_style,
                               "privileged_kinds": kinds, "families": list(families)},
                        extra_writer=write_clevr)
    return load_from_disk(str(out))
