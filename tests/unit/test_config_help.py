"""Every config key explains itself; booleans are true/false only, strings take yes/no/on/off as text."""

from __future__ import annotations

import dataclasses

import pytest

from dopd_vlm.config import (
    ConfigError,
    SFTConfig,
    TrainConfig,
    config_fields,
    field_help,
    load_config,
    save_config,
)
from dopd_vlm.fields import describe
from dopd_vlm.routing import RoutingConfig

TOP_LEVEL = (TrainConfig, SFTConfig)


def _all_dataclasses():
    seen = list(TOP_LEVEL)
    for cls in TOP_LEVEL:
        for f in dataclasses.fields(cls):
            section = getattr(cls(), f.name)
            if dataclasses.is_dataclass(section) and type(section) not in seen:
                seen.append(type(section))
    assert RoutingConfig in seen
    return seen


@pytest.mark.parametrize("cls", _all_dataclasses(), ids=lambda c: c.__name__)
def test_every_field_of_every_config_has_a_description(cls):
    missing = [f.name for f in dataclasses.fields(cls) if not describe(f).strip()]
    assert not missing, f"{cls.__name__}: fields without a description (use dopd_vlm.fields.opt): {missing}"
    for f in dataclasses.fields(cls):
        assert "\n" not in describe(f), f"{cls.__name__}.{f.name}: the description must be one line"


@pytest.mark.parametrize("cls", TOP_LEVEL, ids=lambda c: c.__name__)
def test_every_leaf_key_names_its_source(cls):
    unsourced = [key for key, _, _, desc in config_fields(cls) if "[P" not in desc and "[D" not in desc]
    assert not unsourced, f"{cls.__name__}: descriptions without [P ...] or [D ...]: {unsourced}"


@pytest.mark.parametrize("cls", TOP_LEVEL, ids=lambda c: c.__name__)
def test_field_help_shows_key_default_and_description(cls):
    text = field_help(cls)
    assert "MISSING" not in text and "object at 0x" not in text
    lines = text.splitlines()
    assert len(lines) == len(config_fields(cls))
    by_key = {line.split(" = ", 1)[0].strip(): line for line in lines}
    assert "data.privileged_kinds = [regions]" in by_key["data.privileged_kinds"]
    assert "run.report_to = []" in by_key["run.report_to"]
    assert "model.trust_remote_code = false" in by_key["model.trust_remote_code"]
    assert "true/false only" in by_key["model.trust_remote_code"]


def test_sft_help_shows_the_sft_section_defaults():
    assert "run.output_dir = runs/sft" in field_help(SFTConfig)
    assert "run.output_dir = runs/dopd" in field_help(TrainConfig)


def test_help_renders_for_every_subcommand():
    # "%" in a description once crashed argparse's help formatting
    from dopd_vlm.cli import SUBCOMMANDS, build_parser

    for name in ("train", "sft"):
        parser = build_parser(only=name)
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        text = sub.format_help()
        assert "routing.outlier_quantile = 0.95" in text or name == "sft"
        assert "model.trust_remote_code = false" in text
    assert set(SUBCOMMANDS) >= {"train", "sft", "build"}


def test_mixed_precision_no_from_the_shell_and_from_yaml(tmp_path):
    assert load_config(TrainConfig, None, ["run.mixed_precision=no"]).run.mixed_precision == "no"
    assert load_config(TrainConfig, None, ["mixed_precision=bf16"]).run.mixed_precision == "bf16"
    path = tmp_path / "p.yaml"
    path.write_text("run:\n  mixed_precision: no\n")
    cfg = load_config(TrainConfig, path)
    assert cfg.run.mixed_precision == "no"
    again = load_config(TrainConfig, save_config(cfg, tmp_path / "out" / "config.yaml"))
    assert again.run.mixed_precision == "no"


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "Yes", "OFF", "1", "0", "y"])
def test_bool_fields_refuse_anything_but_true_false(word, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.trust_remote_code: expected true/false"):
        load_config(TrainConfig, None, [f"trust_remote_code={word}"])
    path = tmp_path / "p.yaml"
    path.write_text(f"model:\n  trust_remote_code: {word}\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: model\.trust_remote_code: expected true/false"):
        load_config(TrainConfig, path)


@pytest.mark.parametrize("word, value", [("true", True), ("false", False), ("True", True), ("FALSE", False)])
def test_bool_fields_take_true_false(word, value, tmp_path):
    assert load_config(TrainConfig, None, [f"trust_remote_code={word}"]).model.trust_remote_code is value
    path = tmp_path / "p.yaml"
    path.write_text(f"model:\n  trust_remote_code: {word}\n")
    assert load_config(TrainConfig, path).model.trust_remote_code is value


@pytest.mark.parametrize("word", ["yes", "no", "on", "off"])
def test_string_fields_take_yes_no_on_off_as_text(word, tmp_path):
    assert load_config(TrainConfig, None, [f"run.resume_from={word}"]).run.resume_from == word
    path = tmp_path / "p.yaml"
    path.write_text(f"model:\n  teacher_device: {word}\ndata:\n  privileged_kinds: [regions]\n")
    assert load_config(TrainConfig, path).model.teacher_device == word


def test_string_fields_keep_numbers_as_typed():
    cfg = load_config(TrainConfig, None, ["run.output_dir=1.0e5", "split=007"])
    assert cfg.run.output_dir == "1.0e5" and cfg.data.split == "007"
