"""What a person reads on the terminal: one line per phase with its elapsed time, library
progress bars and chatter off unless ``--verbose``.

    with phase("evaluate teacher"):
        ...                       # prints "evaluate teacher ... 12.3 s" when the block ends
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

_VERBOSE = False


def set_verbose(verbose: bool) -> None:
    """Quiet by default: silence transformers/datasets/lmms-eval progress bars and info logs."""
    global _VERBOSE
    _VERBOSE = bool(verbose)
    if _VERBOSE:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "transformers" in sys.modules:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()


def verbose() -> bool:
    return _VERBOSE


@contextlib.contextmanager
def phase(name: str, stream=None) -> Iterator[None]:
    """Print ``name ... N.N s`` once the block has finished (``failed after`` if it raised)."""
    out = stream or sys.stderr
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        print(f"{name} ... failed after {time.perf_counter() - start:.1f} s", file=out, flush=True)
        raise
    print(f"{name} ... {time.perf_counter() - start:.1f} s", file=out, flush=True)
