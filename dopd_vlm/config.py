"""Typed configuration: dataclasses, YAML presets, ``key=value`` overrides.

Configs are dataclasses at most two levels deep (a top-level config whose fields are scalars or
section dataclasses of scalars). Every value is checked against its field's type when it is
loaded, whether from YAML or from the command line; unknown keys are rejected with the closest
valid name; every run writes its resolved config next to its outputs (``save_config``).

Overrides: ``section.field=value`` or, when the field name is unique across sections, just
``field=value``. Values are parsed as YAML scalars (``1e-5``, ``true``, ``[a, b]``, ``null``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key."""


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else f"; valid keys: {', '.join(sorted(options))}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting int -> float, str paths)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):  # a comma-separated list from the shell
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `5e-6` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            # YAML turns `name=123` into an int; a string field accepts its text form
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")


def _hints(cls) -> dict[str, Any]:
    return get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Build ``cls`` from a (nested) mapping, checking every key and value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}{_closest(key, names)}")
        tp = hints[key]
        kwargs[key] = from_dict(tp, value, f"{full}.") if _is_section(tp) else _coerce(value, tp, full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from e


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _leaf_paths(cls) -> dict[str, list[str]]:
    """Map each leaf field name to the dotted paths that end in it."""
    out: dict[str, list[str]] = {}
    for name, tp in _hints(cls).items():
        if _is_section(tp):
            for sub in _hints(tp):
                out.setdefault(sub, []).append(f"{name}.{sub}")
        out.setdefault(name, []).append(name)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(cfg: C, overrides: list[str] | tuple[str, ...]) -> C:
    """Return a new config with ``key=value`` overrides applied and re-validated."""
    data = to_dict(cfg)
    cls = type(cfg)
    leaves = _leaf_paths(cls)
    all_paths = sorted({p for ps in leaves.values() for p in ps})
    for text in overrides:
        key, value = parse_override(text)
        if "." not in key:
            paths = leaves.get(key)
            if not paths:
                raise ConfigError(f"unknown config key {key!r}{_closest(key, all_paths + list(leaves))}")
            if len(paths) > 1:
                raise ConfigError(f"config key {key!r} is ambiguous: use one of {paths}")
            key = paths[0]
        if key not in all_paths:
            raise ConfigError(f"unknown config key {key!r}{_closest(key, all_paths)}")
        parts = key.split(".")
        target = data
        for p in parts[:-1]:
            target = target[p]
        target[parts[-1]] = value
    return from_dict(cls, data)


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> C:
    """Defaults, then the YAML file (if any), then the overrides; all type-checked."""
    cfg = cls()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except (UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: not a readable UTF-8 YAML file: {e}") from e
        try:
            cfg = from_dict(cls, data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e
    return apply_overrides(cfg, list(overrides))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
    tmp.replace(path)
    return path


def field_help(cls) -> str:
    """One line per field ``key: type = default`` for --help texts."""
    lines = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if _is_section(tp):
            for sf in dataclasses.fields(tp):
                lines.append(f"  {f.name}.{sf.name} = {sf.default!r}")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(f"  {f.name} = {default!r}")
    return "\n".join(lines)


__all__ = ["ConfigError", "apply_overrides", "field_help", "from_dict", "load_config", "save_config",
           "to_dict"]


# =================================================================================================
# The run configs. Sections are flat dataclasses of scalars; comments give meaning and source.
# [P] = stated in the DOPD paper (method.md); [D] = project decision.
# =================================================================================================
from dataclasses import dataclass, field  # noqa: E402

from dopd_vlm.routing import RoutingConfig  # noqa: E402

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    model_name_or_path: str = ""  # the student checkpoint (any HF folder or Hub id)
    teacher_model_name_or_path: str = ""  # the frozen privileged teacher [P: same tokenizer family]
    dtype: str = "float32"  # student weights dtype [D]; use bfloat16 + mixed_precision on GPUs
    teacher_dtype: str = ""  # "" = same as dtype [D]
    teacher_device: str = ""  # "" = the student's device; "cpu" offloads the frozen teacher [D]
    trust_remote_code: bool = False  # security default [D]: never run checkpoint code unless asked
    attn_implementation: str = ""  # "" = the transformers default; e.g. sdpa, flash_attention_2
    gradient_checkpointing: bool = False  # trade compute for memory on the student [D]
    freeze_vision: bool = False  # method.md §6 [D]; tiny presets freeze (demo-notes.md)
    vision_lr_scale: float = 1.0  # vision-tower lr = lr * scale [D]
    use_peft: bool = False  # LoRA through peft [D]
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"  # peft keyword, or comma-separated module names

    def __post_init__(self):
        for name in ("dtype",) + (("teacher_dtype",) if self.teacher_dtype else ()):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if self.vision_lr_scale < 0:
            raise ValueError(f"vision_lr_scale must be >= 0, got {self.vision_lr_scale}")


@dataclass
class DataConfig:
    dataset_path: str = ""  # a `datasets` save_to_disk folder of records (dopd-vlm build)
    split: str = "train"
    privileged_kinds: list[str] = field(default_factory=lambda: ["regions"])  # [P §7: boxes + labels best for VLMs]
    max_samples: int = 0  # 0 = all records
    shuffle: bool = True  # reshuffled each epoch from the seed [D]

    def __post_init__(self):
        if self.max_samples < 0:
            raise ValueError(f"max_samples must be >= 0, got {self.max_samples}")
        from dopd_vlm.privileged import canonical_kind

        for k in self.privileged_kinds:
            canonical_kind(k)


@dataclass
class RolloutConfig:
    num_generations: int = 4  # G rollouts per prompt [P: G = 4]
    max_new_tokens: int = 256  # [D]
    temperature: float = 1.0  # [D: method.md §6]
    top_p: float = 1.0  # [D]
    top_k: int = 0  # 0 = off [D]
    engine: str = "hf"  # hf | vllm [D]

    def __post_init__(self):
        if self.num_generations < 1 or self.max_new_tokens < 1:
            raise ValueError("num_generations and max_new_tokens must be >= 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.engine not in ("hf", "vllm"):
            raise ValueError(f"engine must be 'hf' or 'vllm', got {self.engine!r}")


@dataclass
class OptimConfig:
    lr: float = 5e-6  # [P: Sec. 5 setup]
    weight_decay: float = 0.0  # [D]
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    warmup_ratio: float = 0.03  # cosine schedule with warmup [P: cosine; warmup D]
    max_steps: int = 300  # [P: 300 VLM / 200 LLM]
    prompts_per_step: int = 64  # P prompts per optimiser step [P: 64 VLM / 128 LLM]
    micro_batch_size: int = 0  # sequences per backward; 0 = the whole step at once [D]
    max_grad_norm: float = 1.0  # [D]
    seed: int = 0

    def __post_init__(self):
        if self.lr <= 0 or self.max_steps < 1 or self.prompts_per_step < 1 or self.micro_batch_size < 0:
            raise ValueError("lr > 0, max_steps >= 1, prompts_per_step >= 1, micro_batch_size >= 0 required")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class RunConfig:
    output_dir: str = "runs/dopd"
    mixed_precision: str = "no"  # no | bf16 | fp16 (accelerate)
    loss_impl: str = "dense"  # dense | lean (chunked from hidden states; routing.lean_* set the chunks) [D]
    log_every: int = 1
    sample_every: int = 1  # write decoded samples + per-token regimes every N steps (0 = never)
    save_every: int = 0  # 0 = only at the end
    save_total_limit: int = 2  # keep the last N checkpoints
    resume_from: str = ""  # a checkpoint folder, or "latest" (in output_dir)
    report_to: list[str] = field(default_factory=list)  # tensorboard | wandb | trackio (accelerate)
    max_bad_steps: int = 3  # stop after N non-finite losses in a row [D]
    stop_after_step: int = 0  # stop (with a checkpoint) after this step; 0 = run to max_steps. For tests.
    plots: bool = True

    def __post_init__(self):
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no|bf16|fp16, got {self.mixed_precision!r}")
        if self.loss_impl not in ("dense", "lean"):
            raise ValueError(f"loss_impl must be dense|lean, got {self.loss_impl!r}")
        for name in ("log_every", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("save_every", "sample_every", "save_total_limit", "stop_after_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for r in self.report_to:
            if r not in ("tensorboard", "wandb", "trackio"):
                raise ValueError(f"report_to: unknown tracker {r!r} (tensorboard, wandb, trackio)")


@dataclass
class TrainConfig:
    """`dopd-vlm train` — on-policy distillation with a routing table."""

    table: str = "dopd"  # routing table name (dopd_vlm.tables)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        from dopd_vlm.tables import get_table

        get_table(self.table)


@dataclass
class SFTDataConfig:
    dataset_path: str = ""
    split: str = "train"
    view: str = "plain"  # plain | privileged | mixed (alternate per step): the prompt trained on [D]
    privileged_kinds: list[str] = field(default_factory=lambda: ["regions"])
    target: str = "answer"  # answer | solution: the supervised response [D]
    max_samples: int = 0

    def __post_init__(self):
        if self.view not in ("plain", "privileged", "mixed"):
            raise ValueError(f"view must be plain|privileged|mixed, got {self.view!r}")
        if self.target not in ("answer", "solution"):
            raise ValueError(f"target must be answer|solution, got {self.target!r}")


@dataclass
class SFTOptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_steps: int = 1000
    batch_size: int = 16
    max_grad_norm: float = 1.0
    seed: int = 0
    time_budget_s: float = 0.0  # stop after this many seconds (0 = off); for CPU warm-starts [D]

    def __post_init__(self):
        if self.lr <= 0 or self.max_steps < 1 or self.batch_size < 1:
            raise ValueError("lr > 0, max_steps >= 1, batch_size >= 1 required")


@dataclass
class SFTConfig:
    """`dopd-vlm sft` — supervised warm-start of a student or a teacher."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    optim: SFTOptimConfig = field(default_factory=SFTOptimConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/sft", sample_every=0))
