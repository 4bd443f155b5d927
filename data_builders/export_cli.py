"""Export a built dataset to the formats other trainers read: `dopd-vlm export DATASET --format F --out DIR`.

DATASET is a folder written by `dopd-vlm build` (a `datasets` save_to_disk folder of records).
Formats (docs/data.md, "Exports"):

  trl            a `datasets` folder of TRL conversational vision rows: prompt, completion, images
  llava          data.json in LLaVA's format (`<image>` tag, human/gpt turns) + images/
  llamafactory   data.json (ShareGPT messages + image paths) + dataset_info.json + images/
  qwen_messages  messages.jsonl: qwen-vl-utils messages with file:// image paths, plus id and answer

`--view student` (default) writes the plain prompt a deployed model sees; `--view teacher` appends
the record's privileged_context after the question, exactly as the teacher reads it. A dataset with
several splits is written one sub-folder per split (DIR/train, DIR/test) unless `--split` names one.
The output folder is written whole, then moved into place; an existing one needs --overwrite.
Each export reads back with `dopd-vlm build trl|llava|llamafactory|qwen_messages --source ...`.

Examples:
  dopd-vlm export data/scenes --format llava --out exports/scenes_llava
  dopd-vlm export data/scenes --format trl --split train --view teacher --out exports/scenes_trl_teacher
"""

from __future__ import annotations

import shutil
from pathlib import Path

FORMATS = ("trl", "llava", "llamafactory", "qwen_messages")
# what to pass to `dopd-vlm build` to read an export back: (builder, file inside the split folder)
READ_BACK = {"trl": ("trl", ""), "llava": ("llava", "data.json"), "llamafactory": ("llamafactory", "data.json"),
             "qwen_messages": ("qwen_messages", "messages.jsonl")}


class ExportError(ValueError):
    """The dataset cannot be exported as asked; the message names the folder, split or option."""


def add_arguments(parser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="a folder written by `dopd-vlm build` (save_to_disk)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="target format (see above)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--split", help="export only this split (default: every split, one sub-folder each)")
    parser.add_argument("--view", choices=("student", "teacher"), default="student",
                        help="student: the plain prompt (default); teacher: + the privileged context")
    parser.add_argument("--limit", type=int, help="at most N rows per split")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _exporter(fmt: str):
    from . import exporters

    return {"trl": exporters.export_trl, "llava": exporters.export_llava,
            "llamafactory": exporters.export_llamafactory, "qwen_messages": exporters.export_qwen_messages}[fmt]


def load_splits(dataset: str | Path, split: str | None = None, limit: int | None = None) -> dict:
    """``{split: Dataset}`` of a built dataset folder (a bare Dataset counts as split "train")."""
    from datasets import DatasetDict, load_from_disk

    path = Path(dataset)
    if not path.is_dir():
        raise ExportError(f"{path}: no such dataset folder (build one with `dopd-vlm build`)")
    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(f"{path}: not a `datasets` save_to_disk folder ({e})") from None
    splits = dict(data) if isinstance(data, DatasetDict) else {"train": data}
    if split is not None:
        if split not in splits:
            raise ExportError(f"{path}: no split {split!r}; splits: {sorted(splits)}")
        splits = {split: splits[split]}
    missing = sorted({"id", "prompt", "images", "answer", "privileged_context"} - set(next(iter(splits.values())).column_names))
    if missing:
        raise ExportError(f"{path}: not a dataset of records (missing columns {missing}); see docs/data.md")
    if limit is not None:
        if limit < 0:
            raise ExportError(f"--limit must be >= 0, got {limit}")
        splits = {k: v.select(range(min(limit, len(v)))) for k, v in splits.items()}
    return splits


def export_dataset(dataset: str | Path, fmt: str, out: str | Path, split: str | None = None,
                   view: str = "student", limit: int | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Write the export and return ``{split: folder}``; the folder appears only once complete."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; pass --overwrite to replace it")
    splits = load_splits(dataset, split, limit)
    tmp = out.with_name(out.name + ".tmp-export")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    one = split is not None or not (Path(dataset) / "dataset_dict.json").is_file()  # no per-split folders
    written = {}
    try:
        for name, ds in splits.items():
            folder = tmp if one else tmp / name
            folder.mkdir(parents=True, exist_ok=True)
            _exporter(fmt)(ds, folder, view=view)
            if fmt == "qwen_messages":  # its image paths are absolute: make them name the final folder
                _move_image_paths(folder / "messages.jsonl", tmp.resolve(), out.resolve())
            written[name] = (out if one else out / name)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def _move_image_paths(path: Path, old_root: Path, new_root: Path) -> None:
    import json

    old, new = "file://" + str(old_root), "file://" + str(new_root)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        for message in row["messages"]:
            for part in message["content"] if isinstance(message["content"], list) else ():
                if part.get("type") == "image" and str(part.get("image", "")).startswith(old):
                    part["image"] = new + part["image"][len(old):]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def run(args) -> int:
    from dopd_vlm.console import phase

    with phase(f"export {args.format}"):
        written = export_dataset(args.dataset, args.format, args.out, split=args.split, view=args.view,
                                 limit=args.limit, overwrite=args.overwrite)
    builder, file = READ_BACK[args.format]
    for name, folder in written.items():
        source = folder / file if file else folder
        print(f"{name}: {folder}  (read back: dopd-vlm build {builder} --source {source}"
              f"{'' if args.format == 'trl' else f' --image-root {folder}'} --out DIR)")
    return 0
