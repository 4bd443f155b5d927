"""Reliability: NaN, unknown or mistyped config values are refused when the config is loaded,
with a ``ConfigError`` naming the key, before any model or dataset is touched; the CLI turns them
into a message and an exit status, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from dopd_vlm.config import ConfigError, SFTConfig, TrainConfig, load_config

PRESET = Path(__file__).resolve().parents[2] / "dopd_vlm" / "presets" / "tiny_dopd.yaml"

BAD_OVERRIDES = [
    ("optim.lr=nan", "optim.lr", "finite"),
    ("optim.lr=.nan", "optim.lr", "finite"),
    ("optim.lr=.inf", "optim.lr", "finite"),
    ("routing.beta_w=nan", "routing.beta_w", "finite"),
    ("lr=-1", "optim", "lr > 0"),
    ("optim.lrr=1", "optim.lrr", "did you mean 'optim.lr'"),
    ("bogus_key=1", "bogus_key", "unknown config key"),
    ("max_steps=abc", "optim.max_steps", "expected an integer"),
    ("max_steps=1.5", "optim.max_steps", "expected an integer"),
    ("seed=true", "optim.seed", "expected an integer"),
    ("run.mixed_precision=fp8", "run", "mixed_precision"),
    ("temperature=0", "rollout", "temperature"),
    ("top_p=1.5", "rollout", "top_p"),
    ("routing.normalization=bogus", "routing", "normalization"),
    ("routing.outlier_quantile=2", "routing", "outlier_quantile"),
    ("routing.topk=-3", "routing", "topk"),
    ("model.dtype=float8", "model", "dtype"),
    ("rollout.engine=sglang", "rollout", "engine"),
    ("run.report_to=[mlflow]", "run", "mlflow"),
    ("run.output_dir", "run.output_dir", "key=value"),
    pytest.param("table=bogus_table", "table", "bogus_table", id="unknown-routing-table"),
    pytest.param("data.privileged_kinds=[bogus]", "privileged kind", "bogus", id="unknown-privileged-kind"),
    pytest.param("run.save_every=-1", "save_every", ">= 0", id="negative-save-every"),
]


@pytest.mark.parametrize("override, key, words", BAD_OVERRIDES)
def test_bad_override_is_a_config_error_naming_the_key(override, key, words):
    with pytest.raises(ConfigError) as ei:
        load_config(TrainConfig, PRESET, [override])
    msg = str(ei.value)
    assert key in msg and words in msg, msg


@pytest.mark.parametrize("yaml_text, words", [
    ("optim:\n  lr: .nan\n", "optim.lr: expected a finite number"),
    ("optim:\n  lrr: 1.0\n", "unknown config key 'optim.lrr'"),
    ("optim: 3\n", "expected a mapping, got 3"),
    ("model:\n  trust_remote_code: maybe\n", "model.trust_remote_code: expected true/false"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_bad_yaml_file_names_file_and_key(tmp_path, yaml_text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as ei:
        load_config(TrainConfig, path)
    assert str(path) in str(ei.value) and words in str(ei.value), str(ei.value)




@pytest.mark.parametrize("raw", [
    pytest.param("run:\n  output_dir: caf\xe9\n".encode("latin-1"), id="non-utf8-bytes"),
    pytest.param(b"optim:\n  lr: [1,\n", id="yaml-syntax-error"),
])
def test_unreadable_yaml_is_a_config_error_naming_the_file(tmp_path, raw):
    path = tmp_path / "broken.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as ei:
        load_config(TrainConfig, path)
    assert str(path) in str(ei.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found: /nonexistent.yaml"):
        load_config(TrainConfig, "/nonexistent.yaml")


@pytest.mark.parametrize("override, words", [
    ("data.view=teacher", "view must be plain|privileged|mixed"),
    ("data.target=rationale", "target must be answer|solution"),
    ("optim.batch_size=0", "batch_size >= 1"),
])
def test_sft_config_values(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config(SFTConfig, None, [override])


def test_security_defaults_in_config():
    cfg = load_config(TrainConfig, PRESET)
    assert cfg.model.trust_remote_code is False
    assert load_config(SFTConfig).model.trust_remote_code is False


def test_cli_reports_config_error_without_traceback(capsys):
    from dopd_vlm.cli import main

    rc = main(["train", str(PRESET), "optim.lrr=1"])
    assert rc not in (0, None)
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "did you mean 'optim.lr'" in err
