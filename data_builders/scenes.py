"""Synthetic scenes: exactly annotated image-question data drawn with Pillow (Sort-of-CLEVR lineage).

The offline default of the toolkit (``docs/data.md``, synthetic scenes). Everything is
deterministic from a seed: scene ``i`` of a split uses ``random.Random(f"{seed}/{split}/{i}")``, so
a ``--limit`` prefix of a build equals the same prefix of a larger build.

Two layouts:

- ``grid`` (the CPU demo's default, ``docs/data.md``): an 84x84 image, a 3x3 grid of
  28-px cells, 2-6 objects, one centred 22-px object per occupied cell, 3 shapes x 4 colours on a
  fixed background. With patch 14 / merge 2 each merged visual token covers exactly one cell.
- ``free``: a 224x224 image, 3-7 objects of two sizes placed at random without overlap (a gap of
  ``FREE_GAP_PX`` between boxes and to the border), 3 shapes x 6 colours.

Spatial relations are defined on boxes so they are never a matter of judgement: ``a`` is left of
``b`` iff ``a.x2 <= b.x1`` (above: ``a.y2 <= b.y1``); objects whose projections overlap are in
neither relation, and questions about them are rejected, as are questions whose referent ("the red
circle", "the leftmost object") is not unique.

Scenes and questions are CLEVR v1.0 compatible (``scenes[i].objects``, ``relationships[rel][i]`` =
indices of the objects in relation ``rel`` to object ``i``, question ``program`` =
``[{function, inputs, value_inputs}]``); ``execute_program`` runs CLEVR's functional programs
(the 2D subset: no material, no front/behind) plus three grid/2D extensions (``filter_row``,
``filter_column``, ``extreme``) and records a step-by-step trace.

Question families (one-word answers): ``count``, ``exist``, ``query`` (an attribute of a unique
object), ``compare`` (more X than Y), ``spatial`` (is there an X left of / right of / above / below
the Y), ``extreme`` (attribute of the leftmost / rightmost / topmost / bottommost object); and the
demo's narrower ``count_color``, ``color_at``, ``shape_of_color`` (``DEMO_FAMILIES``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

# Project decision: saturated colours far from the grey background and from each other, named with
# words of the tiny tokenizer's corpus (dopd_vlm/tiny.py scene_corpus).
COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 230), "yellow": (235, 205, 30),
    "purple": (150, 60, 200), "cyan": (40, 200, 210),
}
BACKGROUND = (128, 128, 128)
SHAPES = ("circle", "square", "triangle")
SIZES_PX = {"small": 20, "large": 32}  # free layout (project decision)
FAMILIES = ("count", "exist", "query", "compare", "spatial", "extreme",
            # the narrower templates of the grid layout (docs/data.md): count of a colour, colour at
            # (row, column), shape of the uniquely coloured object
            "count_color", "color_at", "shape_of_color",
            # the CPU demo's multi-part / grounded families (several content tokens per answer):
            # "red two green zero blue one yellow one", "blue triangle", "green circle yes"
            "count_each_color", "shape_of_color_named", "exist_named")
BINARY_FAMILIES = ("exist", "compare", "spatial")
# Project decision: the four one-token-answer families the first CPU demo was measured on.
GRID_FAMILIES = ("count_color", "color_at", "exist", "shape_of_color")
# Project decision: the CPU demo's families. Their answers have several content tokens (so DOPD's
# per-token routing has something to route) and build only on what tiny models learn from pixels
# (counting, colour/shape binding, existence; color_at is never learned in the demo's probes).
DEMO_FAMILIES = ("count_each_color", "shape_of_color_named", "exist_named")
MULTIPART_FAMILIES = DEMO_FAMILIES
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# An occluded object is drawn as this uniform dark square over its box: the pixels say that a cell
# is occupied, never what is there; only the privileged text names it (project decision).
OCCLUDER = (60, 60, 60)
GAPS = ("perceivable", "privileged_only")
DEFAULT_FAMILIES = FAMILIES[:6]
RELATIONS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
EXTREMES = ("leftmost", "rightmost", "topmost", "bottommost")
FREE_GAP_PX = 4  # project decision: boxes never touch each other or the border


GRID_LAYOUTS = ("grid", "occluded")


@dataclass(frozen=True)
class Layout:
    """Scene layout parameters; ``grid`` is the CPU demo's token-local design (docs/data.md)."""

    name: str
    image_size: int
    min_objects: int
    max_objects: int
    colors: tuple[str, ...]
    cell_px: int = 28
    grid: int = 3
    object_px: int = 22
    hidden_prob: float = 0.0  # chance that a scene has one occluded object (grid layouts)
    privileged_only_prob: float = 0.0  # share of questions whose answer needs the occluded object

    @property
    def is_grid(self) -> bool:
        return self.name in GRID_LAYOUTS


LAYOUTS = {
    # the CPU demo's grid: 3x3 cells of 28 px, 2-6 objects, 4 colours
    "grid": Layout("grid", 84, 2, 6, ("red", "green", "blue", "yellow")),
    # the CPU demo: the grid with one occluded object in half of the scenes; a third of the questions
    # are drawn so that their answer depends on it ("privileged_only"), the rest are answered by the
    # visible objects alone ("perceivable") - project decision (issue 14)
    "occluded": Layout("occluded", 84, 2, 6, ("red", "green", "blue", "yellow"), hidden_prob=0.5,
                       privileged_only_prob=1 / 3),
    # docs/data.md: 3-7 objects; 224 px = 8 x 28 = 7 x 32 (whole patches for patch 14 and patch 16) - project decision
    "free": Layout("free", 224, 3, 7, tuple(COLORS)),
}


class NoQuestion(Exception):
    """The sampled template has no unique, unambiguous instance in this scene."""


class ProgramError(ValueError):
    """A program cannot be executed on a scene (unknown function, non-unique referent...)."""


# ---------------------------------------------------------------------------------------- scenes
def make_scene(rng: random.Random, layout: Layout) -> dict:
    """Sample objects (attributes and exact boxes) for one scene; relationships from boxes."""
    n = rng.randint(layout.min_objects, layout.max_objects)
    objects = []
    if layout.is_grid:
        cells = rng.sample(range(layout.grid * layout.grid), n)
        for cell in sorted(cells):
            r, c = divmod(cell, layout.grid)
            off = (layout.cell_px - layout.object_px) // 2
            x1, y1 = c * layout.cell_px + off, r * layout.cell_px + off
            objects.append({"shape": rng.choice(SHAPES), "color": rng.choice(layout.colors), "size": None,
                            "bbox": [x1, y1, x1 + layout.object_px, y1 + layout.object_px],
                            "row": r + 1, "column": c + 1})
        if layout.hidden_prob:
            hide = rng.choice(range(n)) if rng.random() < layout.hidden_prob else None
            for i, o in enumerate(objects):
                o["hidden"] = i == hide
    else:
        while len(objects) < n:
            objects = []
            for _ in range(n):
                size = rng.choice(tuple(SIZES_PX))
                s = SIZES_PX[size]
                for _attempt in range(200):
                    x1 = rng.randint(FREE_GAP_PX, layout.image_size - FREE_GAP_PX - s)
                    y1 = rng.randint(FREE_GAP_PX, layout.image_size - FREE_GAP_PX - s)
                    box = [x1, y1, x1 + s, y1 + s]
                    if all(_gap(box, o["bbox"]) >= FREE_GAP_PX for o in objects):
                        objects.append({"shape": rng.choice(SHAPES), "color": rng.choice(layout.colors),
                                        "size": size, "bbox": box, "row": None, "column": None})
                        break
                else:
                    break  # crowded: resample the whole scene
    for i, o in enumerate(objects):
        x1, y1, x2, y2 = o["bbox"]
        o["id"] = i
        o["pixel_coords"] = [(x1 + x2) / 2, (y1 + y2) / 2, 0.0]
    return {"layout": layout.name, "image_size": [layout.image_size, layout.image_size], "objects": objects,
            "relationships": relationships(objects)}


def _gap(a, b) -> int:
    """Chebyshev gap between two boxes (negative when they overlap)."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def relationships(objects: list[dict]) -> dict:
    """CLEVR convention: ``rel[r][i]`` lists the objects that are ``r`` of object ``i``."""
    def left(a, b):
        return a["bbox"][2] <= b["bbox"][0]

    def above(a, b):
        return a["bbox"][3] <= b["bbox"][1]

    tests = {"left": lambda j, i: left(j, i), "right": lambda j, i: left(i, j),
             "above": lambda j, i: above(j, i), "below": lambda j, i: above(i, j)}
    return {r: [[j["id"] for j in objects if j is not i and f(j, i)] for i in objects] for r, f in tests.items()}


def render_scene(scene: dict):
    """Draw the scene; every shape fills exactly its box (no anti-aliasing)."""
    from PIL import Image, ImageDraw

    w, h = scene["image_size"]
    im = Image.new("RGB", (w, h), BACKGROUND)
    d = ImageDraw.Draw(im)
    for o in scene["objects"]:
        x1, y1, x2, y2 = o["bbox"]
        fill = OCCLUDER if o.get("hidden") else COLORS[o["color"]]
        if o.get("hidden"):  # a uniform cover over the whole box: nothing of the object shows
            d.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
            continue
        # PIL boxes are inclusive: the last pixel of a box [x1, x2) is x2 - 1.
        if o["shape"] == "square":
            d.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
        elif o["shape"] == "circle":
            d.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill)
        else:
            d.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) // 2, y1)], fill=fill)
    return im


# ------------------------------------------------------------------------------ descriptions
def _label(o: dict) -> str:
    # CLEVR scenes also have a material; synthetic objects do not.
    return " ".join(v for v in (o["size"], o["color"], o.get("material"), o["shape"]) if v)


def _where(o: dict) -> str:
    return f" at row {o['row']} column {o['column']}" if o["row"] is not None else ""


def describe(o: dict) -> str:
    return _label(o) + _where(o)


CAPTION_STYLES = ("cells", "slots")


def caption(scene: dict, style: str = "cells") -> str:
    """Grid: objects in reading order with their cell (``cells``), or ``slots``: the 9 cells in
    row-major order, "empty" where no object is, without numbers (an untested idea of the first demo probe: a
    short fixed-length list); free layout: objects from left to right."""
    if style not in CAPTION_STYLES:
        raise ValueError(f"caption style must be one of {CAPTION_STYLES}, got {style!r}")
    objs = scene["objects"]
    if scene["layout"] in GRID_LAYOUTS and style == "slots":
        n = LAYOUTS["grid"].grid
        at = {(o["row"], o["column"]): _label(o) for o in objs}
        return ", ".join(at.get((r, c), "empty") for r in range(1, n + 1) for c in range(1, n + 1)) + "."
    if scene["layout"] in GRID_LAYOUTS:
        return "; ".join(describe(o) for o in objs) + "."
    objs = sorted(objs, key=lambda o: o["pixel_coords"][0])
    return "From left to right: " + ", ".join(f"a {_label(o)}" for o in objs) + "."


def regions(scene: dict, labels: bool = True) -> list[dict]:
    return [{"bbox": [float(v) for v in o["bbox"]], "label": _label(o) if labels else None} for o in scene["objects"]]


def scene_graph(scene: dict) -> dict:
    """Objects with attributes (and grid cells) plus the pairwise left-of / above relations."""
    objs = []
    for o in scene["objects"]:
        d = {"id": o["id"], "color": o["color"], "shape": o["shape"]}
        if o["size"]:
            d["size"] = o["size"]
        if o["row"] is not None:
            d["row"], d["column"] = o["row"], o["column"]
        objs.append(d)
    rel = scene["relationships"]
    # rel["left"][i] = objects left of i  ->  triples (j, "left of", i)
    triples = [[j, "left of", i] for i, js in enumerate(rel["left"]) for j in js]
    triples += [[j, "above", i] for i, js in enumerate(rel["above"]) for j in js]
    return {"objects": objs, "relations": triples}


# ------------------------------------------------------------------------------- programs
def _node(function: str, inputs: list[int], values: list | None = None) -> dict:
    return {"function": function, "inputs": inputs, "value_inputs": [str(v) for v in values or []]}


class _Prog:
    def __init__(self):
        self.nodes: list[dict] = []

    def add(self, function, inputs=(), values=None) -> int:
        self.nodes.append(_node(function, list(inputs), values))
        return len(self.nodes) - 1

    def select(self, desc: dict, start: int | None = None) -> int:
        """scene -> filters for a description {size, color, shape, row, column}."""
        i = self.add("scene") if start is None else start
        for attr in ("size", "color", "shape", "row", "column"):
            if desc.get(attr) is not None:
                i = self.add(f"filter_{attr}", [i], [desc[attr]])
        return i


def _matches(o: dict, desc: dict) -> bool:
    return all(o[k] == v for k, v in desc.items() if v is not None)


def _phrase(desc: dict, plural: bool = False) -> str:
    """Noun phrase for a description: 'red circle', 'green objects', 'object at row 1, column 2'."""
    words = [desc[k] for k in ("size", "color") if desc.get(k)]
    noun = desc.get("shape") or "object"
    words.append(noun + ("s" if plural else ""))
    s = " ".join(words)
    if desc.get("row") is not None:
        s += f" at row {desc['row']}, column {desc['column']}"
    return s


def _unique_desc(rng: random.Random, scene: dict, target: dict, exclude: tuple[str, ...] = ()) -> dict | None:
    """A random description that picks out exactly ``target`` (without the ``exclude`` attributes)."""
    objs = scene["objects"]
    has_size = target["size"] is not None
    cands = [("color", "shape"), ("color",), ("shape",)]
    if has_size:
        cands += [("size", "color", "shape"), ("size", "shape"), ("size", "color")]
    rng.shuffle(cands)
    for attrs in cands:
        if set(attrs) & set(exclude):
            continue
        desc = {a: target[a] for a in attrs}
        if sum(_matches(o, desc) for o in objs) == 1:
            return desc
    return None


def make_question(rng: random.Random, scene: dict, family: str, layout: Layout) -> dict:
    """One question of ``family`` about ``scene`` -> {question, program, question_family, params}.

    Raises ``NoQuestion`` when the sampled instance would be ambiguous or has no unique referent.
    """
    objs = scene["objects"]
    p = _Prog()
    attrs_all = {"color": layout.colors, "shape": SHAPES}
    if layout.name == "free":
        attrs_all["size"] = tuple(SIZES_PX)

    if family == "count":
        # Mostly count attributes that occur, so that the answers are not dominated by zero.
        kind = rng.choice([("color",), ("color",), ("shape",), ("color", "shape")])
        src = rng.choice(objs)
        desc = {a: (src[a] if rng.random() < 0.75 else rng.choice(attrs_all[a])) for a in kind}
        p.add("count", [p.select(desc)])
        q = f"How many {_phrase(desc, plural=True)} are there?"
    elif family == "count_color":
        desc = {"color": rng.choice(layout.colors)}
        p.add("count", [p.select(desc)])
        q = f"How many {_phrase(desc, plural=True)} are there?"
    elif family == "color_at":
        if not layout.is_grid:
            raise ValueError("question family 'color_at' needs a grid layout")
        target = rng.choice(objs)
        desc = {"row": target["row"], "column": target["column"]}
        p.add("query_color", [p.add("unique", [p.select(desc)])])
        q = f"What color is the {_phrase(desc)}?"
    elif family == "shape_of_color":
        target = rng.choice(objs)
        desc = {"color": target["color"]}
        if sum(_matches(o, desc) for o in objs) != 1:
            raise NoQuestion
        p.add("query_shape", [p.add("unique", [p.select(desc)])])
        q = f"What shape is the {_phrase(desc)}?"
    elif family == "count_each_color":
        counts = [p.add("count", [p.select({"color": c})]) for c in layout.colors]
        p.add("answer_parts", counts, list(layout.colors))
        q = "How many objects of each color are there?"
    elif family == "shape_of_color_named":
        target = rng.choice(objs)
        desc = {"color": target["color"]}
        if sum(_matches(o, desc) for o in objs) != 1:
            raise NoQuestion
        i = p.add("query_shape", [p.add("unique", [p.select(desc)])])
        p.add("answer_parts", [i], [target["color"]])
        q = f"What shape is the {_phrase(desc)}?"
    elif family == "exist_named":
        o = rng.choice(objs)
        desc = {"color": o["color"], "shape": o["shape"]} if rng.random() < 0.5 else \
            {"color": rng.choice(layout.colors), "shape": rng.choice(SHAPES)}
        i = p.add("exist", [p.select(desc)])
        p.add("answer_parts", [i], [f"{desc['color']} {desc['shape']}"])
        q = f"Is there a {_phrase(desc)}?"
    elif family == "exist":
        # Half the time ask about an object that is present, so that yes/no are balanced.
        if rng.random() < 0.5:
            o = rng.choice(objs)
            keys = rng.choice([("color", "shape"), ("size", "shape")]) if o["size"] else ("color", "shape")
            desc = {k: o[k] for k in keys}
        else:
            desc = {"color": rng.choice(layout.colors), "shape": rng.choice(SHAPES)}
        p.add("exist", [p.select(desc)])
        q = f"Is there a {_phrase(desc)}?"
    elif family == "query":
        target = rng.choice(objs)
        attr = rng.choice(tuple(attrs_all))
        if layout.is_grid and rng.random() < 0.5:
            desc = {"row": target["row"], "column": target["column"]}
        else:
            desc = _unique_desc(rng, scene, target, exclude=(attr,))
            if desc is None:
                raise NoQuestion
        p.add(f"query_{attr}", [p.add("unique", [p.select(desc)])])
        what = {"color": "color", "shape": "shape", "size": "size"}[attr]
        q = f"What {what} is the {_phrase(desc)}?"
    elif family == "compare":
        attr = rng.choice(("color", "shape"))
        a, b = rng.sample(attrs_all[attr], 2)
        da, db = {attr: a}, {attr: b}
        p.add("greater_than", [p.add("count", [p.select(da)]), p.add("count", [p.select(db)])])
        q = f"Are there more {_phrase(da, plural=True)} than {_phrase(db, plural=True)}?"
    elif family == "spatial":
        if len(objs) < 2:
            raise NoQuestion
        anchor = rng.choice(objs)
        adesc = _unique_desc(rng, scene, anchor)
        if adesc is None:
            raise NoQuestion
        rel = rng.choice(tuple(RELATIONS))
        other = rng.choice([o for o in objs if o is not anchor])
        desc = {"color": other["color"], "shape": other["shape"]} if rng.random() < 0.5 else \
            {"color": rng.choice(layout.colors), "shape": rng.choice(SHAPES)}
        if _matches(anchor, desc):
            raise NoQuestion
        # Every candidate must be clearly on one side of the anchor: no overlapping projections.
        axis = 0 if rel in ("left", "right") else 1
        for o in objs:
            if o is not anchor and _matches(o, desc):
                a1, a2 = anchor["bbox"][axis], anchor["bbox"][axis + 2]
                if not (o["bbox"][axis + 2] <= a1 or o["bbox"][axis] >= a2):
                    raise NoQuestion
        i = p.add("relate", [p.add("unique", [p.select(adesc)])], [rel])
        p.add("exist", [p.select(desc, start=i)])
        q = f"Is there a {_phrase(desc)} {RELATIONS[rel]} the {_phrase(adesc)}?"
    elif family == "extreme":
        ext = rng.choice(EXTREMES)
        attr = rng.choice(tuple(attrs_all))
        if _extreme(objs, ext) is None:
            raise NoQuestion
        p.add(f"query_{attr}", [p.add("extreme", [p.add("scene")], [ext])])
        q = f"What {attr} is the {ext} object?"
    else:
        raise ValueError(f"unknown question family {family!r}; known: {FAMILIES}")
    return {"question": q, "program": p.nodes, "question_family": family}


def _extreme(objs: list[dict], which: str) -> dict | None:
    """The object that is strictly beyond every other one in a direction (boxes, not centres)."""
    def beyond(a, b):
        ax1, ay1, ax2, ay2 = a["bbox"]
        bx1, by1, bx2, by2 = b["bbox"]
        return {"leftmost": ax2 <= bx1, "rightmost": ax1 >= bx2, "topmost": ay2 <= by1, "bottommost": ay1 >= by2}[which]

    hits = [a for a in objs if all(beyond(a, b) for b in objs if b is not a)]
    return hits[0] if len(hits) == 1 else None


# ------------------------------------------------------------------------------- executor
def _word(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return NUMBER_WORDS[v]
    return str(v)


def visible_scene(scene: dict) -> dict:
    """The scene as the image shows it: occluded objects removed (ids renumbered)."""
    objs = [dict(o) for o in scene["objects"] if not o.get("hidden")]
    for i, o in enumerate(objs):
        o["id"] = i
    return {**scene, "objects": objs, "relationships": relationships(objs)}


def gap_of(program: list[dict], scene: dict) -> str:
    """``perceivable`` when the visible objects alone give the same answer, else ``privileged_only``
    (the answer needs an occluded object, which only the privileged text names)."""
    if not any(o.get("hidden") for o in scene["objects"]):
        return "perceivable"
    full = execute_program(program, scene)[0]
    try:
        vis = execute_program(program, visible_scene(scene))[0]
    except ProgramError:
        return "privileged_only"
    return "perceivable" if vis == full else "privileged_only"


def _describe_value(v, scene) -> str:
    objs = scene["objects"]
    if isinstance(v, list):
        return "none" if not v else ", ".join(describe(objs[i]) for i in v)
    if isinstance(v, dict):
        return describe(v)
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def execute_program(program: list[dict], scene: dict) -> tuple[str, list[str]]:
    """Run a CLEVR functional program on a scene -> (answer, trace steps).

    Object sets are lists of object indices; ``unique`` fails unless exactly one object remains.
    """
    objs = scene["objects"]
    rel = scene["relationships"]
    vals: list = []
    trace: list[str] = []
    for k, node in enumerate(program):
        fn, args, vi = node["function"], [vals[i] for i in node["inputs"]], node.get("value_inputs") or []
        if fn == "scene":
            v = [o["id"] for o in objs]
        elif fn.startswith("filter_"):
            attr = fn[len("filter_"):]
            want = vi[0]
            v = [i for i in args[0] if str(objs[i].get(attr)) == want]
        elif fn == "unique":
            if len(args[0]) != 1:
                raise ProgramError(f"node {k}: unique() got {len(args[0])} objects")
            v = objs[args[0][0]]
        elif fn == "relate":
            if vi[0] not in rel:
                raise ProgramError(f"node {k}: relation {vi[0]!r} not in the scene's relationships {sorted(rel)}")
            v = list(rel[vi[0]][args[0]["id"]])
        elif fn == "extreme":
            found = _extreme([objs[i] for i in args[0]], vi[0])
            if found is None:
                raise ProgramError(f"node {k}: no unique {vi[0]} object")
            v = found
        elif fn == "count":
            v = len(args[0])
        elif fn == "exist":
            v = len(args[0]) > 0
        elif fn.startswith("query_"):
            v = args[0][fn[len("query_"):]]
        elif fn.startswith("same_"):
            attr = fn[len("same_"):]
            v = [o["id"] for o in objs if o["id"] != args[0]["id"] and o[attr] == args[0][attr]]
        elif fn.startswith("equal_"):
            v = args[0] == args[1]
        elif fn == "greater_than":
            v = args[0] > args[1]
        elif fn == "answer_parts":
            # the multi-part answer of the demo families: each part named, numbers as words
            v = " ".join(f"{name} {_word(a)}" for name, a in zip(vi, args))
        elif fn == "less_than":
            v = args[0] < args[1]
        elif fn == "union":
            v = sorted(set(args[0]) | set(args[1]))
        elif fn == "intersect":
            v = sorted(set(args[0]) & set(args[1]))
        else:
            raise ProgramError(f"node {k}: unknown function {fn!r}")
        vals.append(v)
        arg = f"[{', '.join(vi)}]" if vi else ""
        trace.append(f"{fn}{arg}: {_describe_value(v, scene)}.")
    return _describe_value(vals[-1], scene), trace


_HINTS = {
    "scene": "Look at all objects.",
    "unique": "There is exactly one such object.",
    "count": "Count them.",
    "exist": "Check whether any are left.",
    "greater_than": "Compare the first count with the second.",
    "less_than": "Compare the first count with the second.",
    "union": "Take both groups together.",
    "intersect": "Keep the objects in both groups.",
    "answer_parts": "Name each part with its answer.",
}


def program_hints(program: list[dict]) -> list[str]:
    """Step-wise hints from a program: what to do at each step, never what comes out."""
    out = []
    for node in program:
        fn, vi = node["function"], node.get("value_inputs") or []
        if fn in _HINTS:
            out.append(_HINTS[fn])
        elif fn in ("filter_row", "filter_column"):
            out.append(f"Keep the objects in {fn[len('filter_'):]} {vi[0]}.")
        elif fn.startswith("filter_"):
            out.append(f"Keep the {vi[0]} objects." if fn != "filter_shape" else f"Keep the {vi[0]}s.")
        elif fn == "relate":
            out.append(f"Find the objects {RELATIONS.get(vi[0], vi[0])} it.")
        elif fn == "extreme":
            out.append(f"Find the {vi[0]} object.")
        elif fn.startswith("query_"):
            out.append(f"Read its {fn[len('query_'):]}.")
        elif fn.startswith("same_"):
            out.append(f"Find the other objects of the same {fn[len('same_'):]}.")
        elif fn.startswith("equal_"):
            out.append(f"Check whether the two {fn[len('equal_'):]}s are equal.")
        else:
            out.append(f"Apply {fn}.")
    return out


# ------------------------------------------------------------------------------- generation
def generate(n: int, seed: int = 0, split: str = "train", layout: str = "grid",
             families: tuple[str, ...] | list[str] = DEFAULT_FAMILIES, start: int = 0):
    """Yield ``(scene, question, image)`` for indices ``start .. start + n - 1`` (one question each).

    The question family of each item is drawn uniformly; a scene that cannot host an unambiguous
    question of that family is redrawn (from the same per-item generator), so families stay balanced.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {sorted(LAYOUTS)}")
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise ValueError(f"unknown question families {bad}; known: {FAMILIES}")
    lay = LAYOUTS[layout]
    for idx in range(start, start + n):
        rng = random.Random(f"{seed}/{split}/{idx}")
        family = rng.choice(list(families))
        # Yes/no families: draw the answer first and keep only instances that give it (balanced).
        want = rng.choice(("yes", "no")) if family in BINARY_FAMILIES else None
        want_gap = None
        if lay.privileged_only_prob:
            want_gap = "privileged_only" if rng.random() < lay.privileged_only_prob else "perceivable"
            if family == "exist_named":
                # a privileged-only existence question is always "yes" (only the occluded object
                # matches); perceivable ones are mostly "no" so that yes/no stay balanced overall
                p_yes = 1.0 if want_gap == "privileged_only" else \
                    (0.5 - lay.privileged_only_prob) / (1 - lay.privileged_only_prob)
                want = "yes" if rng.random() < p_yes else "no"
        q = None
        for _scene_try in range(1000):
            if q is not None:
                break
            scene = make_scene(rng, lay)
            for _ in range(10):
                try:
                    cand = make_question(rng, scene, family, lay)
                except NoQuestion:
                    continue
                ans = execute_program(cand["program"], scene)[0]
                if want is not None and ans.split()[-1] != want:
                    continue
                if want_gap is not None and gap_of(cand["program"], scene) != want_gap:
                    continue
                q = cand
                break
        if q is None:
            raise RuntimeError(f"no {family!r} question found in 1000 {layout} scenes (item {idx})")
        answer, _ = execute_program(q["program"], scene)
        fname = f"SYNTH_{split}_{idx:06d}.png"
        scene.update({"split": split, "image_index": idx, "image_filename": fname})
        question = {"split": split, "image_index": idx, "image_filename": fname, "question_index": idx,
                    "question": q["question"], "answer": answer, "program": q["program"],
                    "question_family": family, "question_family_index": FAMILIES.index(family)}
        if want_gap is not None:
            question["gap"] = want_gap
        yield scene, question, render_scene(scene)


def write_clevr(out_dir: str | Path, split: str, items: list[tuple[dict, dict, object]], seed: int) -> Path:
    """CLEVR v1.0 layout: images/<split>/*.png, scenes/CLEVR_<split>_scenes.json, questions/...

    ``items`` are ``(scene, question, image)`` with the image as PIL or PNG bytes.
    """
    out = Path(out_dir)
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "scenes").mkdir(exist_ok=True)
    (out / "questions").mkdir(exist_ok=True)
    info = {"version": "1.0", "generator": "dopd_vlm synthetic scenes", "seed": seed, "split": split}
    for scene, _, image in items:
        path = out / "images" / split / scene["image_filename"]
        if isinstance(image, bytes):  # already PNG-encoded (the record's bytes)
            path.write_bytes(image)
        else:
            image.save(path)
    # one dumps + write: json.dump's many small writes are several times slower
    (out / "scenes" / f"CLEVR_{split}_scenes.json").write_text(
        json.dumps({"info": info, "scenes": [s for s, _, _ in items]}))
    (out / "questions" / f"CLEVR_{split}_questions.json").write_text(
        json.dumps({"info": info, "questions": [q for _, q, _ in items]}))
    return out


# ---------------------------------------------------------------------------------- records
SOURCE_NAME = "dopd-vlm/synthetic_scenes"
# Project decision: the DOPD paper's best VLM privilege (boxes with labels, Table 5) is the default.
DEFAULT_KINDS = ("regions",)
VARIANTS = {  # the privileged variants of docs/data.md, by name -> kinds
    "caption": ("captions",), "boxes_labels": ("regions",), "boxes_caption": ("boxes", "captions"),
    "scene_graph": ("scene_graph",), "program": ("program",), "trace": ("rationale",),
    "hints": ("hints",), "answer_only": ("answer",), "none": (),
}


# the instruction of the multi-part demo families (project decision)
INSTRUCTION_PARTS = "Answer with each part and its answer."


def scene_record(scene: dict, question: dict, image, seed: int, caption_style: str = "cells") -> dict:
    """A record (``records.py`` schema) with every privileged signal of the scene filled in."""
    from dopd_vlm.privileged import redact_answer

    from .records import INSTRUCTION_WORD, make_record, resolve_image

    img, size = resolve_image(image, record_id=None)
    answer, trace = execute_program(question["program"], scene)
    split, idx = question["split"], question["image_index"]
    return make_record(
        id=f"{SOURCE_NAME}/{scene['layout']}/{split}/{idx:06d}",
        source={"dataset": SOURCE_NAME, "config": scene["layout"], "split": split, "revision": f"seed={seed}"},
        images=[img], image_size=size, question=question["question"], answer=answer,
        instruction=INSTRUCTION_PARTS if question["question_family"] in MULTIPART_FAMILIES else INSTRUCTION_WORD,
        privileged={
            "captions": [caption(scene, caption_style)],
            "regions": regions(scene),
            "rationale": trace,
            "hints": [redact_answer(h, answer) for h in program_hints(question["program"])],
            "scene_graph": scene_graph(scene),
            "program": question["program"],
            "answer": answer,
        },
        meta={"question_family": question["question_family"], "layout": scene["layout"], "seed": seed,
              "caption_style": caption_style,
              "image_filename": scene["image_filename"],
              **({"gap": question["gap"], "eval_group": f"{question['question_family']}/{question['gap']}"}
                 if "gap" in question else {})},
    )


def corpus_sentences(n: int = 300, seed: int = 0) -> list[str]:
    """Every kind of text the generator emits (questions, answers, instructions, privileged text of
    every kind, in both layouts), for training a tiny tokenizer whose words are single tokens.

    Answers are listed bare as well as after a space: an answer starts the assistant turn.
    """
    from dopd_vlm.privileged import KINDS, render_privileged

    out: list[str] = []
    for layout, families in (("grid", DEMO_FAMILIES), ("grid", DEFAULT_FAMILIES), ("free", DEFAULT_FAMILIES)):
        for scene, q, image in generate(n, seed, "corpus", layout, families):
            rec = scene_record(scene, q, image, seed)
            out += [rec["prompt"][0]["content"][-1]["text"], q["answer"], " " + q["answer"],
                    "Caption: " + caption(scene, "slots")]
            out += [render_privileged(rec["privileged"], [k], image_size=rec["meta"]["image_size"]) for k in KINDS]
    return [t for t in out if t]
