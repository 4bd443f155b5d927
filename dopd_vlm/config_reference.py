"""Write the configuration reference (docs/config.md) from the config classes themselves.

    python -m dopd_vlm.config_reference > docs/config.md        # regenerate
    python -m dopd_vlm.config_reference --check docs/config.md  # exit 1 if it is out of date

Every key, its type, its default and its one-line description come from the dataclass fields
(``dopd_vlm.fields.opt``), so the reference cannot drift from the code; a unit test fails when the
committed docs/config.md differs from what this prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from dopd_vlm.config import SFTConfig, TrainConfig, config_fields, show_value, type_name
from dopd_vlm.fields import describe

CONFIGS = (("dopd-vlm train", TrainConfig), ("dopd-vlm sft", SFTConfig))

INTRO = """\
# Configuration reference

Generated from the config classes by `python -m dopd_vlm.config_reference > docs/config.md`; do
not edit by hand (a unit test fails when this file and the code disagree).

A run is configured by a YAML preset (`dopd_vlm/presets/`, each starts with the command that runs
it) and `key=value` overrides on the command line, applied in that order:

```bash
dopd-vlm train dopd_vlm/presets/tiny_dopd.yaml routing.topk=64 run.output_dir=outputs/run
dopd-vlm train dopd_vlm/presets/tiny_dopd.yaml topk=64      # a field name unique across sections
```

- Every value is checked against its field's type, from YAML and from the shell alike; unknown keys
  are refused with the closest valid name; each run writes its resolved `config.yaml` next to its
  outputs, and that file loads back as a preset.
- Values are YAML scalars: `1e-5`, `[a, b]` (or `a,b` for a list), `null`, `""`.
- **Booleans are `true` / `false` only.** `yes`, `no`, `on`, `off` are text everywhere — a string
  key takes them as written (`run.mixed_precision=no`, also in YAML files, where YAML 1.1 would
  have read `false`), a boolean key refuses them (`model.trust_remote_code=yes` is an error).
- Sources in brackets: **[P §n]** stated in the DOPD paper (section n of docs/method.md), **[D]** a
  project decision where the paper is silent.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "\\<").replace("\n", " ")


def render() -> str:
    parts = [INTRO]
    for command, cls in CONFIGS:
        parts.append(f"\n## `{command}` — {cls.__name__}\n")
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        if doc and not doc.startswith(cls.__name__ + "("):
            parts.append(f"\n{doc}\n")
        sections = {f.name: describe(f) for f in dataclasses.fields(cls)}
        rows = config_fields(cls)
        current = None
        for key, tp, default, desc in rows:
            section = key.split(".", 1)[0] if "." in key else ""
            if section != current:
                current = section
                title = f"`{section}`" if section else "top level"
                about = f" — {sections[section]}" if section and sections.get(section) else ""
                parts.append(f"\n### {title}{about}\n\n| key | type | default | description |\n|---|---|---|---|\n")
            parts.append(f"| `{key}` | `{_cell(type_name(tp))}` | `{_cell(show_value(default))}` | {_cell(desc)} |\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dopd_vlm.config_reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", metavar="FILE", help="compare FILE with the generated text; exit 1 if they differ")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = Path(args.check).read_text(encoding="utf-8") if Path(args.check).is_file() else ""
        if current != text:
            print(f"{args.check} is out of date: run `python -m dopd_vlm.config_reference > {args.check}`",
                  file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
