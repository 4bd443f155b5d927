"""Security defaults checked on the source itself (AST, not grep: comments and docstrings do not
count), and the fault-injection hook that the fault tests rely on."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dopd_vlm", "data_builders")


def _sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 20  # the scan saw the packages
    return files


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    return ""


def _kw(call: ast.Call, key: str):
    for k in call.keywords:
        if k.arg == key:
            return k.value
    return None


def _findings():
    out: dict[str, list[str]] = {k: [] for k in ("torch_load", "unsafe_torch_load", "pickle", "eval", "yaml_load",
                                                  "remote_code_literal", "bomb_limit", "shell", "unsafe_weights")}
    for path in _sources():
        rel = path.relative_to(ROOT)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal", "shelve") for n in names):
                    out["pickle"].append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Attribute) and t.attr == "MAX_IMAGE_PIXELS":
                        out["bomb_limit"].append(f"{rel}:{node.lineno}")
        for call in _calls(tree):
            name = _name(call.func)
            where = f"{rel}:{call.lineno}"
            if name == "torch.load":
                out["torch_load"].append(where)
                wo = _kw(call, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    out["unsafe_torch_load"].append(where)
            if name in ("eval", "exec", "compile", "__import__"):
                out["eval"].append(where)
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                out["yaml_load"].append(where)
            trc = _kw(call, "trust_remote_code")
            if isinstance(trc, ast.Constant) and trc.value is True:
                out["remote_code_literal"].append(where)
            sh = _kw(call, "shell")
            if isinstance(sh, ast.Constant) and sh.value is True:
                out["shell"].append(where)
            us = _kw(call, "use_safetensors")
            if isinstance(us, ast.Constant) and us.value is False:
                out["unsafe_weights"].append(where)
    return out


@pytest.fixture(scope="module")
def findings():
    return _findings()


def test_scan_sees_the_trainer_state_loads(findings):
    # the scan is not vacuous: checkpoint.py loads optimizer, scheduler and RNG state
    assert sum("dopd_vlm/checkpoint.py" in w for w in findings["torch_load"]) == 3


@pytest.mark.parametrize("kind", ["unsafe_torch_load", "pickle", "eval", "yaml_load", "remote_code_literal",
                                  "bomb_limit", "shell", "unsafe_weights"])
def test_no_unsafe_loading_in_the_package(findings, kind):
    assert findings[kind] == [], f"{kind}: {findings[kind]}"


def test_model_loading_passes_trust_remote_code_and_safetensors_through():
    import inspect

    from dopd_vlm.adapters.base import Adapter

    assert inspect.signature(Adapter.load).parameters["trust_remote_code"].default is False
    assert inspect.signature(Adapter.load_model).parameters["trust_remote_code"].default is False
    assert inspect.signature(Adapter.load_processor).parameters["trust_remote_code"].default is False
    assert "use_safetensors=True" in inspect.getsource(Adapter.load_model)


# ----------------------------------------------------------------------------- fault hook
def test_fault_spec_parsing():
    from dopd_vlm.faults import FaultSpecError, parse_fault_spec

    assert parse_fault_spec("checkpoint.after_model:3") == ("checkpoint.after_model", 3)
    for bad in ("checkpoint.after_model", "nowhere:3", "checkpoint.after_model:x", ":3"):
        with pytest.raises(FaultSpecError, match="DOPD_FAULT_AT"):
            parse_fault_spec(bad)


def _run_hook(env_value: str | None) -> subprocess.CompletedProcess:
    code = ("from dopd_vlm.faults import fault_point\n"
            "fault_point('checkpoint.after_model', 1)\n"
            "fault_point('checkpoint.after_model', 2)\n"
            "print('survived')\n")
    env = {k: v for k, v in os.environ.items() if k != "DOPD_FAULT_AT"}
    if env_value is not None:
        env["DOPD_FAULT_AT"] = env_value
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_fault_hook_kills_only_at_its_point_and_step():
    assert _run_hook(None).stdout.strip() == "survived"
    assert _run_hook("checkpoint.before_rename:2").stdout.strip() == "survived"
    res = _run_hook("checkpoint.after_model:2")
    assert res.returncode == -signal.SIGKILL and "survived" not in res.stdout
    assert "killing process" in res.stderr
    res = _run_hook("bogus:2")
    assert res.returncode != 0 and "FaultSpecError" in res.stderr


def test_unknown_fault_point_in_code_is_an_error():
    from dopd_vlm.faults import FaultSpecError, fault_point

    with pytest.raises(FaultSpecError, match="unknown fault point"):
        fault_point("checkpoint.typo", 1)
