"""Synthetic scenes: determinism, exact boxes and pixels, layouts, and answers re-derived from the
question text and the scene objects alone (without the program executor)."""

from __future__ import annotations

import collections
import json
import re

import numpy as np
import pytest

from data_builders import scenes as S

SHAPES = {"circle", "square", "triangle"}


# --------------------------------------------------------------- an independent reference solver
def _parse_phrase(phrase: str) -> dict:
    """'large red circles' / 'green objects' / 'object at row 1, column 2' -> attribute filter."""
    m = re.fullmatch(r"object at row (\d), column (\d)", phrase)
    if m:
        return {"row": int(m.group(1)), "column": int(m.group(2))}
    words = phrase.split()
    noun = words[-1]
    noun = noun[:-1] if noun.endswith("s") and noun[:-1] in SHAPES | {"object"} else noun
    desc = {} if noun == "object" else {"shape": noun}
    for w in words[:-1]:
        desc["size" if w in ("small", "large") else "color"] = w
    return desc


def _select(objs, phrase):
    d = _parse_phrase(phrase)
    return [o for o in objs if all(o[k] == v for k, v in d.items())]


def _left(a, b):  # a strictly left of b: boxes do not overlap horizontally
    return a["bbox"][2] <= b["bbox"][0]


def _above(a, b):
    return a["bbox"][3] <= b["bbox"][1]


def solve(question: str, objs: list[dict]) -> str:
    yn = {True: "yes", False: "no"}
    if m := re.fullmatch(r"How many (.+) are there\?", question):
        return str(len(_select(objs, m.group(1))))
    if m := re.fullmatch(r"Is there a (.+) (left of|right of|above|below) the (.+)\?", question):
        (anchor,) = _select(objs, m.group(3))  # the referent must be unique
        rel = {"left of": lambda o: _left(o, anchor), "right of": lambda o: _left(anchor, o),
               "above": lambda o: _above(o, anchor), "below": lambda o: _above(anchor, o)}[m.group(2)]
        return yn[any(rel(o) for o in _select(objs, m.group(1)) if o is not anchor)]
    if m := re.fullmatch(r"Is there a (.+)\?", question):
        return yn[bool(_select(objs, m.group(1)))]
    if m := re.fullmatch(r"Are there more (.+) than (.+)\?", question):
        return yn[len(_select(objs, m.group(1))) > len(_select(objs, m.group(2)))]
    if m := re.fullmatch(r"What (color|shape|size) is the (leftmost|rightmost|topmost|bottommost) object\?", question):
        beyond = {"leftmost": lambda a, b: _left(a, b), "rightmost": lambda a, b: _left(b, a),
                  "topmost": lambda a, b: _above(a, b), "bottommost": lambda a, b: _above(b, a)}[m.group(2)]
        (o,) = [a for a in objs if all(beyond(a, b) for b in objs if b is not a)]
        return o[m.group(1)]
    if m := re.fullmatch(r"What (color|shape|size) is the (.+)\?", question):
        (o,) = _select(objs, m.group(2))
        return o[m.group(1)]
    raise AssertionError(f"unparsed question {question!r}")


# ----------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("layout,families", [("grid", S.DEFAULT_FAMILIES), ("free", S.DEFAULT_FAMILIES),
                                             ("grid", S.GRID_FAMILIES)])
def test_answers_rederived_independently(layout, families):
    items = list(S.generate(300, seed=3, layout=layout, families=families))
    fams = collections.Counter(q["question_family"] for _, q, _ in items)
    assert set(fams) == set(families)
    for scene, q, _ in items:
        assert solve(q["question"], scene["objects"]) == q["answer"], q
        # one-word answers from the tokenizer's words
        assert re.fullmatch(r"\d|yes|no|red|green|blue|yellow|purple|cyan|circle|square|triangle|small|large",
                            q["answer"]), q["answer"]


def test_binary_families_are_balanced():
    items = list(S.generate(600, seed=0, layout="grid"))
    for fam in S.BINARY_FAMILIES:
        answers = collections.Counter(q["answer"] for _, q, _ in items if q["question_family"] == fam)
        assert abs(answers["yes"] - answers["no"]) <= 0.25 * sum(answers.values()), (fam, answers)


def test_deterministic_from_seed_and_prefix_stable():
    a = list(S.generate(20, seed=7, layout="grid"))
    b = list(S.generate(20, seed=7, layout="grid"))
    c = list(S.generate(5, seed=7, layout="grid", start=10))
    for (sa, qa, ia), (sb, qb, ib) in zip(a, b):
        assert json.dumps(sa, sort_keys=True) == json.dumps(sb, sort_keys=True) and qa == qb
        assert np.array_equal(np.asarray(ia), np.asarray(ib))
    assert [q for _, q, _ in a[10:15]] == [q for _, q, _ in c]
    other = list(S.generate(20, seed=8, layout="grid"))
    assert [s["objects"] for s, _, _ in other] != [s["objects"] for s, _, _ in a]
    test = list(S.generate(20, seed=7, split="test", layout="grid"))
    assert [s["objects"] for s, _, _ in test] != [s["objects"] for s, _, _ in a]


def test_grid_layout_is_token_local():
    for scene, _, im in S.generate(200, seed=1, layout="grid"):
        assert im.size == (84, 84) and scene["image_size"] == [84, 84]
        objs = scene["objects"]
        assert 2 <= len(objs) <= 6
        cells = {(o["row"], o["column"]) for o in objs}
        assert len(cells) == len(objs)  # one object per occupied cell
        for o in objs:
            x1, y1, x2, y2 = o["bbox"]
            assert x2 - x1 == 22 and y2 - y1 == 22
            # centred in its 28-px cell
            assert (x1 + x2) / 2 == 28 * (o["column"] - 1) + 14 and (y1 + y2) / 2 == 28 * (o["row"] - 1) + 14
            assert o["color"] in ("red", "green", "blue", "yellow") and o["shape"] in SHAPES


def test_boxes_are_exact_and_pixels_match_colours():
    for layout in ("grid", "free"):
        for scene, _, im in S.generate(60, seed=2, layout=layout):
            px = np.asarray(im).astype(int)
            fg = np.any(px != np.array(S.BACKGROUND), axis=-1)
            covered = np.zeros_like(fg)
            for o in scene["objects"]:
                x1, y1, x2, y2 = o["bbox"]
                covered[y1:y2, x1:x2] = True
                ys, xs = np.nonzero(fg[y1:y2, x1:x2])
                # drawn extent == box: the shape touches all four sides of its box
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (0, 0, x2 - x1, y2 - y1), (layout, o)
                inside = px[y1:y2, x1:x2][fg[y1:y2, x1:x2]]
                assert (inside == np.array(S.COLORS[o["color"]])).all()
            assert not (fg & ~covered).any()  # nothing drawn outside the boxes


def test_free_layout_constraints():
    for scene, _, im in S.generate(200, seed=4, layout="free"):
        objs = scene["objects"]
        assert im.size == (224, 224) and 3 <= len(objs) <= 7
        for i, a in enumerate(objs):
            assert min(a["bbox"]) >= S.FREE_GAP_PX and max(a["bbox"]) <= 224 - S.FREE_GAP_PX
            for b in objs[i + 1:]:
                assert S._gap(a["bbox"], b["bbox"]) >= S.FREE_GAP_PX  # no overlap, no touching


def test_executor_trace_and_hints():
    scene, q, _ = next(S.generate(1, seed=0, layout="grid", families=["count"]))
    answer, trace = S.execute_program(q["program"], scene)
    assert answer == q["answer"] and len(trace) == len(q["program"])
    assert trace[-1] == f"count: {answer}."
    hints = S.program_hints(q["program"])
    assert hints[-1] == "Count them." and len(hints) == len(q["program"])
    with pytest.raises(S.ProgramError, match="unknown function"):
        S.execute_program([{"function": "teleport", "inputs": [], "value_inputs": []}], scene)
    with pytest.raises(S.ProgramError, match="unique"):
        S.execute_program([{"function": "scene", "inputs": [], "value_inputs": []},
                           {"function": "unique", "inputs": [0], "value_inputs": []}], scene)


def test_clevr_output_round_trips(tmp_path):
    items = list(S.generate(12, seed=5, layout="free"))
    out = S.write_clevr(tmp_path / "clevr", "train", items, seed=5)
    scenes = json.loads((out / "scenes" / "CLEVR_train_scenes.json").read_text())["scenes"]
    qs = json.loads((out / "questions" / "CLEVR_train_questions.json").read_text())["questions"]
    assert len(scenes) == len(qs) == 12
    for q in qs:
        sc = scenes[[s["image_index"] for s in scenes].index(q["image_index"])]
        assert S.execute_program(q["program"], sc)[0] == q["answer"]
        assert (out / "images" / "train" / q["image_filename"]).is_file()
        assert set(q["program"][0]) == {"function", "inputs", "value_inputs"}


def test_unknown_layout_or_family_fails():
    with pytest.raises(ValueError, match="layout"):
        next(S.generate(1, layout="hex"))
    with pytest.raises(ValueError, match="families"):
        next(S.generate(1, families=["riddle"]))


def test_grid_families_match_demo_notes():
    items = list(S.generate(400, seed=0, layout="grid", families=S.GRID_FAMILIES))
    for _, q, _ in items:
        fam = q["question_family"]
        if fam == "count_color":
            assert re.fullmatch(r"How many (red|green|blue|yellow) objects are there\?", q["question"])
        elif fam == "color_at":
            assert re.fullmatch(r"What color is the object at row [123], column [123]\?", q["question"])
        elif fam == "shape_of_color":
            assert re.fullmatch(r"What shape is the (red|green|blue|yellow) object\?", q["question"])
    with pytest.raises(ValueError, match="grid layout"):
        next(S.generate(5, layout="free", families=["color_at"]))


def test_corpus_sentences_cover_every_emitted_text():
    corpus = S.corpus_sentences(20)
    assert any(t.endswith("Answer with a single word.") for t in corpus)
    for header in ("Objects: ", "Boxes: ", "Caption: ", "Hints: ", "Steps: ", "Scene: ", "Program: ", "Answer: "):
        assert any(t.startswith(header) for t in corpus), header
    assert "yes" in corpus and " yes" in corpus and "" not in corpus


def test_caption_styles():
    scene, _, _ = next(S.generate(1, seed=0, layout="grid"))
    slots = S.caption(scene, "slots").rstrip(".").split(", ")
    assert len(slots) == 9
    for o in scene["objects"]:
        assert slots[3 * (o["row"] - 1) + o["column"] - 1] == f"{o['color']} {o['shape']}"
    assert slots.count("empty") == 9 - len(scene["objects"])
    assert S.caption(scene, "cells").startswith(S.describe(scene["objects"][0]))
    with pytest.raises(ValueError, match="caption style"):
        S.caption(scene, "poem")


# ------------------------------------------------------------------- the demo's occluded layout
NUM = {w: i for i, w in enumerate(S.NUMBER_WORDS)}


def solve_parts(question: str, objs: list[dict]) -> str:
    """Reference solver of the multi-part demo families, from the question text and objects only."""
    if question == "How many objects of each color are there?":
        return " ".join(f"{c} {S.NUMBER_WORDS[sum(o['color'] == c for o in objs)]}"
                        for c in ("red", "green", "blue", "yellow"))
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        (o,) = [o for o in objs if o["color"] == m.group(1)]
        return f"{m.group(1)} {o['shape']}"
    m = re.fullmatch(r"Is there a (\w+) (\w+)\?", question)
    assert m, question
    found = any(o["color"] == m.group(1) and o["shape"] == m.group(2) for o in objs)
    return f"{m.group(1)} {m.group(2)} {'yes' if found else 'no'}"


def test_occluded_answers_and_gap_rederived_independently():
    items = list(S.generate(450, seed=5, layout="occluded", families=S.DEMO_FAMILIES))
    gaps = collections.Counter()
    for scene, q, _ in items:
        objs = scene["objects"]
        assert solve_parts(q["question"], objs) == q["answer"], q
        visible = [o for o in objs if not o["hidden"]]
        try:
            vis_answer = solve_parts(q["question"], visible)
        except ValueError:  # the unique referent is the covered object
            vis_answer = None
        want = "perceivable" if vis_answer == q["answer"] else "privileged_only"
        assert q["gap"] == want, q
        gaps[q["gap"]] += 1
        assert sum(o["hidden"] for o in objs) <= 1
    # a third of the questions need the covered object (Layout.privileged_only_prob)
    assert abs(gaps["privileged_only"] / len(items) - 1 / 3) < 0.08, gaps
    exist = collections.Counter(q["answer"].split()[-1] for _, q, _ in items if q["question_family"] == "exist_named")
    assert abs(exist["yes"] - exist["no"]) <= 0.25 * sum(exist.values()), exist
    lens = {f: {len(q["answer"].split()) for _, q, _ in items if q["question_family"] == f} for f in S.DEMO_FAMILIES}
    assert lens == {"count_each_color": {8}, "shape_of_color_named": {2}, "exist_named": {3}}


def test_occluded_object_shows_nothing_but_the_slots_name_it():
    seen = 0
    for scene, _q, im in S.generate(60, seed=2, layout="occluded", families=S.DEMO_FAMILIES):
        px = np.asarray(im)
        for o in scene["objects"]:
            x1, y1, x2, y2 = o["bbox"]
            box = px[y1:y2, x1:x2].reshape(-1, 3)
            if o["hidden"]:
                seen += 1
                assert (box == np.array(S.OCCLUDER)).all()  # a uniform cover: colour and shape are gone
            else:
                assert (box == np.array(S.COLORS[o["color"]])).all(axis=1).any()
        slots = S.caption(scene, "slots").rstrip(".").split(", ")
        for o in scene["objects"]:  # the privileged text names every object, covered or not
            assert slots[3 * (o["row"] - 1) + o["column"] - 1] == f"{o['color']} {o['shape']}"
    assert seen > 10


def test_occluded_records_carry_the_gap_tag():
    scene, q, im = next(S.generate(1, seed=0, layout="occluded", families=["count_each_color"]))
    rec = S.scene_record(scene, q, im, seed=0, caption_style="slots")
    assert rec["meta"]["gap"] in S.GAPS
    assert rec["meta"]["eval_group"] == f"count_each_color/{rec['meta']['gap']}"
    assert rec["prompt"][0]["content"][-1]["text"].endswith(S.INSTRUCTION_PARTS)
    # the grid layout's records and scenes are unchanged (no hidden flag, no gap)
    scene, q, im = next(S.generate(1, seed=0, layout="grid"))
    assert "hidden" not in scene["objects"][0] and "gap" not in q
