"""The typed config system: YAML, key=value overrides, validation, resolved-config round trip."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from dopd_vlm.config import ConfigError, apply_overrides, load_config, save_config, to_dict


@dataclasses.dataclass
class Opt:
    lr: float = 1e-3
    steps: int = 10
    kind: Literal["adamw", "sgd"] = "adamw"

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclasses.dataclass
class Sampler:
    temperature: float = 1.0
    top_k: int = 0


@dataclasses.dataclass
class Cfg:
    name: str = "run"
    seed: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)
    teacher: str | None = None
    opt: Opt = dataclasses.field(default_factory=Opt)
    sampler: Sampler = dataclasses.field(default_factory=Sampler)
    top_k: int = 5  # also a leaf of `sampler`: bare `top_k=` is ambiguous


def test_defaults_and_dotted_override():
    cfg = apply_overrides(Cfg(), ["opt.lr=5e-6", "seed=3", "sampler.temperature=0.7"])
    assert cfg.opt.lr == 5e-6 and isinstance(cfg.opt.lr, float)
    assert cfg.seed == 3 and cfg.sampler.temperature == 0.7


def test_bare_leaf_override_when_unique():
    cfg = apply_overrides(Cfg(), ["lr=2e-5", "steps=7", "kind=sgd"])
    assert (cfg.opt.lr, cfg.opt.steps, cfg.opt.kind) == (2e-5, 7, "sgd")


def test_ambiguous_leaf_rejected():
    with pytest.raises(ConfigError, match="ambiguous"):
        apply_overrides(Cfg(), ["top_k=3"])
    assert apply_overrides(Cfg(), ["sampler.top_k=3"]).sampler.top_k == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("opt.lrr=1", "did you mean 'opt.lr'"),
        ("sed=1", "did you mean 'seed'"),
        ("seed=1.5", "expected an integer"),
        ("seed=true", "expected an integer"),
        ("opt.lr=nan", "finite"),
        ("opt.lr=.inf", "finite"),
        ("opt.kind=adam", "not one of"),
        ("opt.lr=-1", "lr must be > 0"),
        ("noequals", "key=value"),
        ("opt=3", "expected a mapping"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Cfg(), [override])


def test_list_optional_and_string_values():
    cfg = apply_overrides(Cfg(), ["tags=a,b", "teacher=/models/t", "name=123"])
    assert cfg.tags == ["a", "b"] and cfg.teacher == "/models/t" and cfg.name == "123"
    assert apply_overrides(cfg, ["teacher=null"]).teacher is None


def test_yaml_then_overrides_and_roundtrip(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("# run: dopd-vlm train preset.yaml\nseed: 4\nopt:\n  lr: 1.0e-4\n  steps: 3\n")
    cfg = load_config(Cfg, path, ["steps=5"])
    assert (cfg.seed, cfg.opt.lr, cfg.opt.steps) == (4, 1e-4, 5)
    out = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(Cfg, out) == cfg
    assert to_dict(cfg)["opt"]["steps"] == 5


def test_yaml_unknown_key_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("opt:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*opt.learning_rate"):
        load_config(Cfg, path)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, "/nonexistent/x.yaml")
