"""TODO(issue 6): `dopd-vlm build`."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("source", help="builder name")


def run(args) -> int:
    raise SystemExit("dopd-vlm build: not implemented yet")
