"""What a person reads on the terminal: one line per phase with its elapsed time, library
progress bars and chatter off unless ``--verbose``.

    with phase("evaluate teacher"):
        ...                       # prints "evaluate teacher ... 12.3 s" when the block ends

Also: the start-up summary of ``train`` / ``sft`` (``startup_summary``: processes and their
devices, records, table, policies scored), the check that a multi-process launch really started
several processes (``launch_mismatch``), and the check that every tracker in ``run.report_to`` is
installed (``check_trackers``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence

_VERBOSE = False
_QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}  # TQDM_*: defaults of every tqdm bar
_SET_BY_US: set[str] = set()


def set_verbose(verbose: bool) -> None:
    """Quiet by default: silence transformers/datasets/lmms-eval progress bars and info logs.

    tqdm reads ``TQDM_DISABLE`` when it is imported, so call this before heavy imports (the CLI
    does, before it imports a subcommand); a bar that passes ``disable=False`` itself still shows.
    ``set_verbose(True)`` undoes what an earlier quiet call set.
    """
    global _VERBOSE
    _VERBOSE = bool(verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if _VERBOSE:
        for name in list(_SET_BY_US):
            os.environ.pop(name, None)
            _SET_BY_US.discard(name)
    else:
        for name, value in _QUIET_ENV.items():
            if name not in os.environ:
                os.environ[name] = value
                _SET_BY_US.add(name)
    # libraries already imported read no environment any more: switch them directly
    if "transformers" in sys.modules:
        import transformers

        if _VERBOSE:
            transformers.logging.set_verbosity_warning()
            transformers.logging.enable_progress_bar()
        else:
            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        if _VERBOSE:
            datasets.enable_progress_bars()
        else:
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


# ------------------------------------------------------------------------------ trackers
# run.report_to name -> the packages accelerate accepts for it (any one suffices)
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",)}


def check_trackers(report_to: Sequence[str]) -> None:
    """Refuse to start when a tracker of ``run.report_to`` is not installed (accelerate would only
    warn once and then log nothing for the whole run)."""
    from dopd_vlm.config import ConfigError

    for name in report_to:
        packages = TRACKER_PACKAGES.get(name)
        if packages is None:
            raise ConfigError(f"run.report_to: unknown tracker {name!r} ({', '.join(TRACKER_PACKAGES)})")
        if not any(importlib.util.find_spec(p) is not None for p in packages):
            raise ConfigError(f"run.report_to: {name!r} is not installed (pip install {packages[0]}), "
                              "or drop it from run.report_to")


# ------------------------------------------------------------------------------ launch checks
def _option(argv: list[str], *names: str) -> str | None:
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def requested_processes(launcher_argv: list[str] | None = None) -> tuple[int | None, str]:
    """``(processes asked for, the launch command)`` read from the parent process's command line
    when it is ``accelerate launch`` or ``torchrun`` (Linux ``/proc``); ``(None, "")`` otherwise."""
    if launcher_argv is None:
        try:
            raw = open(f"/proc/{os.getppid()}/cmdline", "rb").read()
        except OSError:
            return None, ""
        launcher_argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    text = " ".join(launcher_argv)
    is_accelerate = any(a.endswith("accelerate") for a in launcher_argv[:3]) and "launch" in launcher_argv
    is_torchrun = any(a.endswith("torchrun") or a == "torch.distributed.run" for a in launcher_argv[:3])
    if not (is_accelerate or is_torchrun):
        return None, ""
    value = _option(launcher_argv, "--num_processes", "--num-processes", "--nproc_per_node", "--nproc-per-node")
    if value is None and is_accelerate:
        # an explicit config file, else the one `accelerate config` writes (accelerate's default)
        hf_home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        config = _option(launcher_argv, "--config_file", "--config-file") or os.path.join(
            hf_home, "accelerate", "default_config.yaml")
        if config and os.path.isfile(config):
            import yaml

            try:
                value = str((yaml.safe_load(open(config)) or {}).get("num_processes", ""))
            except (OSError, yaml.YAMLError):
                value = None
    try:
        return (int(value) if value else None), shlex.join(launcher_argv) if text else ""
    except ValueError:
        return None, text


def launch_mismatch(world_size: int, launcher_argv: list[str] | None = None) -> str:
    """A warning when the launcher was asked for more processes than started (``""`` if none).

    ``accelerate launch --cpu --num_processes 2`` starts ONE process (``--cpu`` forces accelerate's
    single-process launcher; measured with accelerate 1.15): on CPU, several processes need
    ``accelerate launch --multi_gpu --num_processes 2`` (DDP over gloo) or ``torchrun``.
    """
    asked, command = requested_processes(launcher_argv)
    if asked is None or asked <= world_size:
        return ""
    why = "`accelerate launch --cpu` always runs one process" if "--cpu" in command.split() else "check the launch"
    return (f"warning: the launcher was asked for {asked} processes but this run has {world_size} "
            f"(WORLD_SIZE={os.environ.get('WORLD_SIZE', 'unset')}): {why}. On CPU, start several with "
            f"`accelerate launch --multi_gpu --num_processes {asked} -m dopd_vlm.train ...` (DDP over gloo) "
            f"or `torchrun --standalone --nproc_per_node {asked} -m dopd_vlm.train ...` (launch was: {command})")


# ------------------------------------------------------------------------------ start-up summary
def startup_summary(accelerator, command: str, *, records: int, dataset: str = "", table: str = "",
                    policies: Sequence[str] = (), extra: dict[str, str] | None = None, stream=None,
                    compact: bool | None = None) -> str:
    """Print (main process) what this run is: processes and the device of each, records, table,
    policies scored, plus ``extra`` rows; warn when the launch started fewer processes than asked.

    ``compact`` (default: unless ``--verbose``) prints it as one line, as every phase is printed
    in quiet mode; otherwise one row per item. Collective when distributed: every process must
    call it. Returns the printed text."""
    from accelerate.utils import gather_object

    world = accelerator.num_processes
    devices = gather_object([str(accelerator.device)]) if world > 1 else [str(accelerator.device)]
    kind = str(accelerator.distributed_type).split(".")[-1]
    kind = "single process" if kind == "NO" else kind
    by_device: dict[str, list[int]] = {}
    for rank, dev in enumerate(devices):
        by_device.setdefault(dev, []).append(rank)
    placed = ", ".join(f"{dev} (rank{'s' if len(r) > 1 else ''} {_ranks(r)})" for dev, r in by_device.items())
    rows = [("processes", f"{world} ({kind}): {placed}"),
            ("records", f"{records}" + (f" from {dataset}" if dataset else ""))]
    if table:
        rows.append(("table", table))
    if policies:
        rows.append(("policies scored", ", ".join(sorted(policies))))
    rows += list((extra or {}).items())
    if (not _VERBOSE) if compact is None else compact:
        text = f"dopd-vlm {command}: " + " · ".join(f"{k} {v}" for k, v in rows)
    else:
        width = max(len(k) for k, _ in rows)
        text = f"dopd-vlm {command}\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
    warning = launch_mismatch(world)
    if accelerator.is_main_process:
        out = stream or sys.stderr
        print(text, file=out, flush=True)
        if warning:
            print(warning, file=out, flush=True)
    return text + ("\n" + warning if warning else "")


def _ranks(ranks: list[int]) -> str:
    if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ", ".join(map(str, ranks))
