"""CLEVR v1.0 format: ``questions/CLEVR_<split>_questions.json``, ``scenes/CLEVR_<split>_scenes.json``,
``images/<split>/<image_filename>`` under one root (``--source ROOT``); the synthetic scenes write it too.

Per question: image, question, answer; privileged ``program`` (CLEVR functional program),
``scene_graph`` (the scene's objects and relationships), ``rationale`` = the program executed on the
scene step by step (``scenes.execute_program``; a question whose executed answer differs from the
given answer is skipped), ``hints`` = what each step does (no values), and ``regions`` when the scene
objects carry boxes (synthetic scenes; CLEVR's own scenes have none).
"""

from __future__ import annotations

import json
from pathlib import Path

from .build import SkipRow
from .records import make_record, resolve_image
from .scenes import ProgramError, execute_program, program_hints
from .sources import SourceBuilder, SourceError


def load_clevr(root: Path, split: str):
    from datasets import Dataset

    qpath = root / "questions" / f"CLEVR_{split}_questions.json"
    if not qpath.is_file():
        raise SourceError(f"CLEVR root {root}: no {qpath.relative_to(root)}")
    questions = json.loads(qpath.read_text())["questions"]
    spath = root / "scenes" / f"CLEVR_{split}_scenes.json"
    scenes = {}
    if spath.is_file():
        scenes = {s["image_index"]: s for s in json.loads(spath.read_text())["scenes"]}
    rows = [{"question_index": q.get("question_index", i), "image_index": q["image_index"],
             "image_filename": q["image_filename"], "question": q["question"], "answer": q.get("answer"),
             "program": json.dumps(q.get("program")), "question_family_index": q.get("question_family_index")}
            for i, q in enumerate(questions)]
    return Dataset.from_list(rows), {"scenes": scenes}, str(root / "images" / split)


def _scene_graph(scene: dict) -> dict:
    keep = ("color", "shape", "material", "size", "row", "column")
    objs = [{"id": i, **{k: o[k] for k in keep if o.get(k) is not None}} for i, o in enumerate(scene["objects"])]
    return {"objects": objs, "relationships": scene["relationships"]}


def _normalized(scene: dict) -> dict:
    """CLEVR objects lack the grid cells and ids of synthetic scenes; add them as None / index."""
    objs = [{"row": None, "column": None, "size": None, **o, "id": i} for i, o in enumerate(scene["objects"])]
    return {**scene, "objects": objs}


def convert(row, ctx, idx):
    rid = ctx.record_id(row["question_index"])
    if row["answer"] is None:
        raise SkipRow("no answer (CLEVR test split)")
    program = json.loads(row["program"]) if row["program"] else None
    img, size = resolve_image(row["image_filename"], ctx.image_root, rid, "image_filename")
    answer = str(row["answer"])
    priv = {"program": program, "answer": answer}
    scene = ctx.options["scenes"].get(row["image_index"])
    if scene is not None:
        scene = _normalized(scene)
        priv["scene_graph"] = _scene_graph(scene)
        if program:
            try:
                executed, trace = execute_program(program, scene)
            except ProgramError as e:
                raise SkipRow(f"program does not execute: {e}") from e
            if executed != answer:
                raise SkipRow(f"program answer mismatch: executed {executed!r}, given {answer!r}")
            priv["rationale"] = trace
        if all("bbox" in o for o in scene["objects"]):
            priv["regions"] = [{"bbox": [float(v) for v in o["bbox"]],
                                "label": " ".join(o[k] for k in ("size", "color", "material", "shape") if o.get(k))}
                               for o in scene["objects"]]
    if program:
        priv["hints"] = program_hints(program)
    return make_record(id=rid, source=ctx.source(), images=[img], image_size=size, question=row["question"],
                       answer=answer, instruction="Answer with a single word.", privileged=priv,
                       meta={"image_index": row["image_index"], "image_filename": row["image_filename"],
                             "question_family_index": row["question_family_index"]})


CLEVR = SourceBuilder(name="clevr", hub_ids=(), required=("question", "image_filename", "image_index"), convert=convert,
                      default_kinds=("hints",), default_split="train", load_local=load_clevr,
                      doc="CLEVR v1.0 layout (--source ROOT): program, scene graph, executed trace")
