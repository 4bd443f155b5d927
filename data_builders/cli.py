"""Build a privileged dataset: `dopd-vlm build SOURCE --out DIR [options]`.

SOURCE is a builder name (see `--list`). `synthetic_scenes` needs no input and works offline;
every other builder reads `--source` (a Hub id, or local parquet / json / jsonl files or a
`save_to_disk` folder; path-valued images are looked up under `--image-root`).

The output folder is written atomically (temporary folder, then rename): a `datasets` DatasetDict
(`datasets.load_from_disk(DIR)`), `build_summary.json` (rows kept, skipped with reasons, leak and
contamination counts, source revision), and optional `parquet/` and `jsonl/` copies.

Examples:
  dopd-vlm build synthetic_scenes --out data/scenes --limit 1000 --privileged regions
  dopd-vlm build scienceqa --source derek-thomas/ScienceQA --split train --out data/sqa
  dopd-vlm build gsm8k --source gsm8k_train.parquet --out data/gsm8k --privileged hints
"""

from __future__ import annotations

import sys

from .importers import RECORDS_SCHEMA

__doc__ = (__doc__ or "") + "\nThe `records` builder reads this project's records or a file a user writes; the " \
    "importers (llava, llamafactory, qwen_messages, trl) keep the same privileged fields when a row has them.\n" \
    + RECORDS_SCHEMA + "\n"


def add_arguments(parser) -> None:
    from .registry import builder_names

    parser.add_argument("builder", metavar="SOURCE", nargs="?", help=f"builder name: {', '.join(builder_names())}")
    parser.add_argument("--list", action="store_true", help="list the builders and their Hub ids, then exit")
    parser.add_argument("--out", help="output folder (created atomically; see --overwrite)")
    parser.add_argument("--source", help="Hub id or local path (parquet / json / jsonl file, folder of them, "
                                         "save_to_disk folder, CLEVR root); default: the builder's Hub id")
    parser.add_argument("--config", help="dataset config (Hub) if the source has several")
    parser.add_argument("--split", help="split to build (synthetic_scenes: train or test; default both)")
    parser.add_argument("--revision", help="Hub revision (commit, tag or branch) to load and record")
    parser.add_argument("--image-root", help="folder that path-valued images are relative to")
    parser.add_argument("--privileged", help="comma-separated privileged kinds rendered into privileged_context "
                                             "(regions, boxes, captions, hints, rationale, solution, lecture, ocr, "
                                             "scene_graph, program, answer); default: the builder's")
    parser.add_argument("--limit", type=int, help="at most N rows per split")
    parser.add_argument("--num-proc", type=int, default=1, help="processes for the row conversion")
    parser.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                        help="malformed rows: skip them (counted, with reasons; the default, project decision) "
                             "or stop the build at the first one")
    parser.add_argument("--duplicates", choices=("error", "drop-later"), default="error",
                        help="rows that share a record id: stop the build naming the first (default, project "
                             "decision) or keep the first row of each id and count the later ones as skips")
    parser.add_argument("--max-aspect-ratio", type=float, default=200.0, metavar="R",
                        help="skip rows with an image whose long side exceeds R times its short side (default 200: "
                             "the Qwen-VL processors refuse larger ratios)")
    parser.add_argument("--min-image-side", type=int, default=1, metavar="PX",
                        help="skip rows with an image whose short side is under PX pixels (default 1; e.g. 28 for "
                             "processors that refuse images smaller than one merged patch)")
    parser.add_argument("--leak-policy", choices=("error", "drop", "keep"), default="keep",
                        help="rows whose privileged text states the final answer: fail, drop, or keep them "
                             "flagged in meta (default keep, project decision: counts are always reported)")
    parser.add_argument("--exclude-images", action="append", default=[], metavar="EVAL_SET",
                        help="drop rows whose image appears (by pixel hash) in this evaluation set: a folder of "
                             "images, a datasets folder, or a parquet/json/jsonl file (repeatable)")
    parser.add_argument("--parquet", action="store_true", help="also write parquet/<split>.parquet")
    parser.add_argument("--jsonl", action="store_true", help="also write jsonl/<split>.jsonl with image files")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="builder option, e.g. mode=direct (aokvqa), hold_out=false (captions), box_frame=stored|displayed "
                             "(refcoco, vg and the importers: which pixels the boxes of an EXIF-rotated image refer to), "
                             "box_format=xyxy|xywh (importers); an unknown key is an error (repeatable)")
    g = parser.add_argument_group("synthetic_scenes")
    g.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    g.add_argument("--layout", choices=("grid", "free"), default="grid",
                   help="grid: 84x84, 3x3 cells of 28 px (the CPU demo); free: 224x224, 3-7 objects")
    g.add_argument("--families", help="comma-separated question families (count, exist, query, compare, spatial, "
                                      "extreme [the default six], count_color, color_at, shape_of_color), or 'demo' "
                                      "for the demo's four (count_color, color_at, exist, shape_of_color)")
    g.add_argument("--caption-style", choices=("cells", "slots"), default="cells",
                   help="grid captions: 'cells' (colour shape at row r column c; ...) or 'slots' (the 9 cells in "
                        "row-major order, 'empty' where no object is)")
    g.add_argument("--n-test", type=int, help="test-split size when both splits are built (default: --limit or 200)")


def _kinds(text: str | None) -> list[str] | None:
    if text is None:
        return None
    from dopd_vlm.privileged import canonical_kind

    kinds = [k.strip() for k in text.split(",") if k.strip() and k.strip() != "none"]
    for k in kinds:
        canonical_kind(k)  # a typo fails here, one line naming the valid kinds (UnknownKindError)
    return kinds


def _options(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"dopd-vlm build: --option needs KEY=VALUE, got {item!r}")
        out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def run(args) -> int:
    from .registry import describe_builders

    if args.list:
        print(describe_builders())
        return 0
    if not args.builder:
        print("dopd-vlm build: name a SOURCE builder (see --list)", file=sys.stderr)
        return 2
    if not args.out:
        print("dopd-vlm build: --out DIR is required", file=sys.stderr)
        return 2
    kinds = _kinds(args.privileged)
    if args.builder == "synthetic_scenes":
        from . import scenes
        from .synthetic import DEFAULT_N, build_synthetic

        if args.split not in (None, "train", "test"):
            print(f"dopd-vlm build synthetic_scenes: --split must be train or test, got {args.split!r}", file=sys.stderr)
            return 2
        n_train = args.limit if args.limit is not None else DEFAULT_N["train"]
        n_test = args.n_test if args.n_test is not None else (args.limit if args.limit is not None else DEFAULT_N["test"])
        if args.split == "train":
            n_test = 0
        elif args.split == "test":
            n_train = args.limit if args.limit is not None else DEFAULT_N["test"]
            n_test, n_train = n_train, 0
        if args.families == "demo":
            families = scenes.DEMO_FAMILIES
        else:
            families = tuple(f.strip() for f in args.families.split(",")) if args.families else scenes.DEFAULT_FAMILIES
        dd = build_synthetic(args.out, n_train, n_test, seed=args.seed, layout=args.layout,
                             privileged_kinds=kinds if kinds is not None else scenes.DEFAULT_KINDS,
                             families=families, leak_policy=args.leak_policy, parquet=args.parquet,
                             jsonl=args.jsonl, overwrite=args.overwrite, caption_style=args.caption_style)
        print(f"wrote {args.out}: " + ", ".join(f"{k} {len(v)}" for k, v in dd.items()))
        return _refuse_empty(args, dd)

    from dopd_vlm.privileged import AnswerLeakError

    from .build import DatasetWriteError, DuplicateIdError
    from .records import RecordError
    from .sources import SourceError, run_source_build

    try:
        dd = run_source_build(args.builder, out=args.out, source=args.source, config=args.config, split=args.split,
                         revision=args.revision, image_root=args.image_root, kinds=kinds, limit=args.limit,
                         num_proc=args.num_proc, on_error=args.on_error, leak_policy=args.leak_policy,
                         exclude_images=args.exclude_images, parquet=args.parquet, jsonl=args.jsonl,
                         overwrite=args.overwrite, options=_options(args.option), duplicates=args.duplicates,
                         image_limits={"max_aspect_ratio": args.max_aspect_ratio, "min_side": args.min_image_side})
    except (SourceError, FileExistsError, RecordError, AnswerLeakError, DuplicateIdError, DatasetWriteError) as e:
        print(f"dopd-vlm build {args.builder}: {e}", file=sys.stderr)
        return 1
    return _refuse_empty(args, dd)


def _refuse_empty(args, dd) -> int:
    """A build that keeps 0 rows is a failure (exit 1) with its reasons, not a silent empty dataset."""
    if sum(len(v) for v in dd.values()):
        return 0
    import json
    from pathlib import Path

    reasons: dict[str, int] = {}
    try:
        for s in json.loads((Path(args.out) / "build_summary.json").read_text())["splits"]:
            for k, v in s.get("skip_reasons", {}).items():
                reasons[k] = reasons.get(k, 0) + v
            if s.get("leak", {}).get("dropped"):
                reasons["answer leak (--leak-policy drop)"] = reasons.get("answer leak (--leak-policy drop)", 0) + s["leak"]["dropped"]
            if s.get("contamination_dropped"):
                reasons["eval-contaminated"] = reasons.get("eval-contaminated", 0) + s["contamination_dropped"]
    except (OSError, ValueError, KeyError):
        pass
    why = ", ".join(f"{k}: {v}" for k, v in reasons.items()) or "the source has no rows (or --limit 0)"
    print(f"dopd-vlm build {args.builder}: kept 0 rows ({why}); the empty dataset in {args.out} cannot be trained "
          "on (details in its build_summary.json)", file=sys.stderr)
    return 1
