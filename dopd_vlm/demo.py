"""TODO(issue): not implemented yet."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config")


def run(args) -> int:
    raise SystemExit("dopd-vlm: this command is not implemented yet")
