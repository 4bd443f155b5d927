"""Never train on empty privilege (issue 13, point 6): build summaries count empty contexts per kind,
`dopd-vlm train` refuses or warns, prints the teacher's view, and samples.jsonl shows what it saw."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dopd_vlm.privilege_check import EmptyPrivilegeError, check_training_data, empty_privilege_counts

PRESET = Path(__file__).resolve().parents[2] / "dopd_vlm" / "presets" / "tiny_dopd.yaml"
_spec = importlib.util.spec_from_file_location(
    "source_fixtures", Path(__file__).parents[1] / "fixtures" / "data" / "source_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from data_builders.synthetic import build_synthetic

    root = tmp_path_factory.mktemp("privcheck")
    build_synthetic(root / "scenes", n_train=8, n_test=0, seed=0, layout="grid", privileged_kinds=["regions"],
                    quiet=True)
    return root


def _strip_regions(src: Path, dst: Path, keep_every: int = 0) -> Path:
    """A copy of ``src`` whose rows have no boxes (``keep_every=k``: every k-th row keeps them)."""
    from datasets import load_from_disk

    ds = load_from_disk(str(src))["train"]

    def strip(rec, i):
        if keep_every and i % keep_every == 0:
            return rec
        rec["privileged"]["regions"] = []
        rec["privileged_context"] = ""
        return rec

    ds.map(strip, with_indices=True, features=ds.features).save_to_disk(str(dst))
    return dst


def test_build_summary_counts_empty_contexts_per_kind(scenes, tmp_path):
    from data_builders.synthetic import build_synthetic

    build_synthetic(tmp_path / "b", n_train=6, n_test=0, seed=1, layout="grid", privileged_kinds=["regions", "lecture"],
                    quiet=True)
    s = json.loads((tmp_path / "b" / "build_summary.json").read_text())["splits"][0]
    # scenes always carry boxes; they have no lecture: every row is empty for that kind, none overall
    assert s["privileged_empty"] == {"rows": 6, "kinds": ["regions", "lecture"], "empty_all": 0,
                                     "empty_by_kind": {"regions": 0, "lecture": 6}}
    from datasets import load_from_disk

    half = _strip_regions(scenes / "scenes", tmp_path / "half", keep_every=2)
    counts = empty_privilege_counts(load_from_disk(str(half)), ["regions", "captions"])
    assert counts["empty_by_kind"] == {"regions": 4, "captions": 0} and counts["empty_all"] == 0


def test_cli_build_prints_empty_counts_of_a_source_without_privilege(tmp_path, capsys):
    """The ViRL39K situation: a source with no boxes built with --privileged regions."""
    from dopd_vlm.cli import main

    info = fx.write_gsm8k(tmp_path / "src")
    assert main(["build", "gsm8k", "--source", info["source"], "--out", str(tmp_path / "o"), "--privileged",
                 "regions,hints"]) == 0
    out = capsys.readouterr().out
    assert "privileged context empty in 0 of 1 rows (per kind: regions 1, hints 0); warning: regions empty in " \
           "every row" in out and "dopd-vlm annotate" in out
    s = json.loads((tmp_path / "o" / "build_summary.json").read_text())["splits"][0]
    assert s["privileged_empty"]["empty_by_kind"] == {"regions": 1, "hints": 0}


def test_refusal_and_warning_thresholds():
    full = {"privileged": {"regions": [{"bbox": [0, 0, 4, 4], "label": "a"}]}, "meta": {"image_size": [8, 8]}}
    empty = {"privileged": {"regions": []}, "meta": {"image_size": [8, 8], "privileged_kinds": ["regions"]}}
    dopd = ("teacher_priv", "student_priv", "teacher_plain", "student_plain")
    with pytest.raises(EmptyPrivilegeError, match="empty in 2 of 2 rows"):
        check_training_data([empty, empty], ["regions"], dopd)
    warnings = []
    counts = check_training_data([full, empty, full, full], ["regions"], dopd, warn=warnings.append)
    assert counts["empty_all"] == 1 and len(warnings) == 1 and "empty in 1 of 4 rows (25.0%)" in warnings[0]
    with pytest.raises(EmptyPrivilegeError, match="max_empty_privileged_share=0.2"):
        check_training_data([full, empty, full, full], ["regions"], dopd, max_empty_share=0.2)
    # a table that never scores a privileged view does not care (vanilla OPD)
    assert check_training_data([empty], ["regions"], ("teacher_plain", "student_plain")) is None
    with pytest.raises(EmptyPrivilegeError, match="0 rows"):
        check_training_data([], ["regions"], dopd)


def _train_cli(*args) -> int:
    from dopd_vlm.cli import main

    return main(["train", str(PRESET), *args])


def test_train_refuses_empty_privilege_and_names_the_kinds(scenes, tmp_path, capsys):
    empty = _strip_regions(scenes / "scenes", tmp_path / "empty")
    common = ["model.model_name_or_path=/nonexistent/student", "model.teacher_model_name_or_path=/nonexistent/teacher",
              f"run.output_dir={tmp_path / 'run'}"]
    capsys.readouterr()
    # refused before any model is loaded (the model paths above do not exist), in one line
    assert _train_cli(f"data.dataset_path={empty}", *common) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dopd-vlm train: error:") and "empty in 8 of 8 rows" in err and "privileged_kinds=['regions']" in err
    assert "dopd-vlm annotate" in err  # nothing to render: says how to write privileged information

    # a dataset built with [regions] trained with a kind it does not carry: the mismatch is named with a fix
    assert _train_cli(f"data.dataset_path={scenes / 'scenes'}", "data.privileged_kinds=[lecture]", *common) == 2
    err = capsys.readouterr().err
    assert "the build rendered kinds {'regions': 8}" in err and "set data.privileged_kinds" in err
    assert "regions" in err.split("set data.privileged_kinds")[1]

    # vanilla OPD scores no privileged view: the same data passes the check (it fails later, on the model path)
    assert _train_cli(f"data.dataset_path={empty}", "table=vanilla_opd", *common) == 2
    err = capsys.readouterr().err
    assert "cannot load '/nonexistent/student'" in err and "privileged context" not in err


def test_train_warns_prints_teacher_view_and_logs_what_the_teacher_saw(scenes, tmp_path, tiny_ckpt, capsys):
    from dopd_vlm.config import TrainConfig, load_config
    from dopd_vlm.train import train

    half = _strip_regions(scenes / "scenes", tmp_path / "half", keep_every=2)
    kw = dict(min_pixels=84 * 84, max_pixels=84 * 84)
    out = tmp_path / "run"
    cfg = load_config(TrainConfig, PRESET, [
        f"model.model_name_or_path={tiny_ckpt('qwen2_5_vl', seed=1, **kw)}",
        f"model.teacher_model_name_or_path={tiny_ckpt('qwen2_5_vl', seed=2, layers=3, **kw)}",
        f"data.dataset_path={half}", f"run.output_dir={out}", "prompts_per_step=2", "num_generations=2",
        "max_new_tokens=4", "max_steps=1", "run.sample_every=1", "data.shuffle=false"])
    train(cfg)
    printed = capsys.readouterr().out
    assert "warning:" in printed and "empty in 4 of 8 rows (50.0%)" in printed
    assert "teacher's privileged view of" in printed and "Objects: " in printed
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2
    # row 0 kept its boxes, row 1 did not: the log shows exactly what the teacher read
    assert samples[0]["privileged"].startswith("Objects: ") and samples[1]["privileged"] == ""
    assert "teacher also saw: Objects: " in (out / "tokens.html").read_text()


def test_sft_refuses_a_privileged_view_with_empty_privilege(scenes, tmp_path, tiny_ckpt, capsys):
    """`dopd-vlm sft data.view=privileged|mixed` on rows without privileged content would train the plain
    view under another name: refused in one line; the plain view of the same rows trains."""
    from dopd_vlm.cli import main

    empty = _strip_regions(scenes / "scenes", tmp_path / "empty")
    student = tiny_ckpt("qwen2_5_vl")
    common = [f"model.model_name_or_path={student}", f"data.dataset_path={empty}", "optim.max_steps=1",
              "optim.batch_size=2"]
    for view in ("privileged", "mixed"):
        capsys.readouterr()
        assert main(["sft", *common, f"data.view={view}", f"run.output_dir={tmp_path / view}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("dopd-vlm sft: error:") and "empty in 8 of 8 rows" in err, err
    # data.max_empty_privileged_share reaches sft: half the rows empty is refused above a 0.2 share
    half = _strip_regions(scenes / "scenes", tmp_path / "half", keep_every=2)
    capsys.readouterr()
    assert main(["sft", *common, f"data.dataset_path={half}", "data.view=privileged",
                 "data.max_empty_privileged_share=0.2", f"run.output_dir={tmp_path / 'half_run'}"]) == 2
    err = capsys.readouterr().err
    assert "empty in 4 of 8 rows" in err and "max_empty_privileged_share=0.2" in err, err
    assert main(["sft", *common, "data.view=plain", f"run.output_dir={tmp_path / 'plain'}"]) == 0
