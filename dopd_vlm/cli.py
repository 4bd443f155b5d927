"""The `dopd-vlm` command line: one subcommand per module.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their subcommand is parsed, and keep heavy imports (transformers,
datasets, lmms-eval) inside ``run`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "build": ("data_builders.cli", "build a privileged dataset from a source dataset or local files"),
    "annotate": ("data_builders.annotate", "write privileged information into a built dataset with a model"),
    "export": ("data_builders.export_cli", "export a built dataset to TRL, LLaVA, LLaMA-Factory or qwen-vl-utils messages"),
    "sft": ("dopd_vlm.sft", "supervised fine-tuning (warm-start a student or a teacher)"),
    "train": ("dopd_vlm.train", "on-policy distillation: DOPD and its baselines"),
    "eval": ("dopd_vlm.evaluate", "evaluate checkpoints with lmms-eval; make lmms-eval tasks"),
    "demo": ("dopd_vlm.demo", "the embedded default: synthetic scenes + tiny models, end to end on CPU"),
    "tiny-models": ("dopd_vlm.tiny", "write a tiny random-init model + processor checkpoint folder"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, just that subcommand's module is imported (the others get
    a bare parser), so ``dopd-vlm build ...`` never pays for torch being imported by ``train``."""
    from dopd_vlm import __version__

    parser = argparse.ArgumentParser(
        prog="dopd-vlm",
        description="Privileged on-policy distillation (DOPD) for vision-language models.",
        epilog="Documentation: docs/method.md (the method), docs/data.md (records, builders, exports), "
               "docs/config.md (every config key), docs/gpu.md (GPUs, accelerate, vLLM).",
    )
    parser.add_argument("--version", action="version", version=f"dopd-vlm {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show library progress bars and info logs (quiet by default: one line per phase)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    from dopd_vlm.console import set_verbose

    # before any subcommand module is imported: libraries read their progress-bar settings at import
    set_verbose("--verbose" in argv[:argv.index(chosen)] if chosen in argv else "--verbose" in argv)
    args = build_parser(only=chosen if chosen in SUBCOMMANDS else "").parse_args(argv)
    set_verbose(args.verbose)
    try:
        return int(args._run(args) or 0)
    except ValueError as e:
        if not type(e).__module__.startswith(("dopd_vlm", "data_builders")):
            raise  # a library's or a programming error keeps its traceback
        print(f"dopd-vlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before a command's own Ctrl-C handling is in place (train/sft: runfolder.py)
        print(f"dopd-vlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
