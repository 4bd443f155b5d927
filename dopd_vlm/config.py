"""Typed configuration: dataclasses, YAML presets, ``key=value`` overrides.

Configs are dataclasses at most two levels deep (a top-level config whose fields are scalars or
section dataclasses of scalars). Every value is checked against its field's type when it is
loaded, whether from YAML or from the command line; unknown keys are rejected with the closest
valid name; every run writes its resolved config next to its outputs (``save_config``).

Overrides: ``section.field=value`` or, when the field name is unique across sections, just
``field=value``. Values are parsed as YAML scalars (``1e-5``, ``true``, ``[a, b]``, ``null``).

Booleans are ``true`` / ``false`` only, in YAML files and overrides alike: YAML 1.1 would also read
``yes``/``no``/``on``/``off`` as booleans, which turns ``run.mixed_precision: no`` into ``False``
and lets ``trust_remote_code=yes`` switch on code execution by a word that was meant as a string.
Here those words stay text: a string field takes them as written, a bool field refuses them.
The reference of every key, generated from these classes, is docs/config.md
(``python -m dopd_vlm.config_reference``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

C = TypeVar("C")


class _Loader(yaml.SafeLoader):
    """YAML with booleans spelled ``true``/``false`` only (YAML 1.2 style; see the module docstring)."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(stream: Any) -> Any:
    """``yaml.safe_load`` with booleans spelled true/false only (``no`` stays the string "no")."""
    loader = _Loader(stream)  # a SafeLoader: what yaml.safe_load does, with the bool resolver above
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _leaf_type(cls, path: str) -> Any:
    tp: Any = cls
    for part in path.split("."):
        tp = _hints(tp)[part]
    return tp


def _takes_text(tp: Any) -> bool:
    """A ``str`` field (or an optional one): it takes an override's text as written."""
    return tp is str or (get_origin(tp) in (Union, types.UnionType) and str in get_args(tp))


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
        if isinstance(value, (int, float)) and not isinstance(value, bool) and _takes_text(_leaf_type(cls, key)):
            value = text.split("=", 1)[1].strip()  # `output_dir=1.0e5` stays "1.0e5", not "100000.0"
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
                data = load_yaml(fh) or {}
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


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise ConfigError(f"config field {f.name!r} has no default")


def show_value(value: Any) -> str:
    """A default as it is written on the command line or in YAML: ``""``, ``true``, ``[regions]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '""' if value == "" else value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    return repr(value)


def type_name(tp: Any) -> str:
    """``str``, ``list[str]``, ``int | None`` as written in the annotation."""
    if isinstance(tp, type) and get_origin(tp) is None:
        return tp.__name__
    return str(tp).replace("typing.", "")


def config_fields(cls) -> list[tuple[str, Any, Any, str]]:
    """Every leaf key of a config as ``(dotted key, type, default, description)``, in field order.

    Section defaults come from the config's own default instance, so a section whose factory
    overrides a value (``SFTConfig.run.output_dir = runs/sft``) shows that value.
    """
    out = []
    try:
        instance = cls()
    except (TypeError, ValueError):
        instance = None
    from dopd_vlm.fields import describe

    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            section = getattr(instance, f.name) if instance is not None else _default(f)
            sub_hints = _hints(tp)
            for sf in dataclasses.fields(tp):
                out.append((f"{f.name}.{sf.name}", sub_hints[sf.name], getattr(section, sf.name), describe(sf)))
        else:
            default = getattr(instance, f.name) if instance is not None else _default(f)
            out.append((f.name, tp, default, describe(f)))
    return out


def field_help(cls) -> str:
    """One line per key, ``key = default  description``, for --help texts."""
    rows = [(key, show_value(default), desc) for key, _, default, desc in config_fields(cls)]
    width = max(len(k) + len(d) for k, d, _ in rows) + 3
    return "\n".join(f"  {f'{k} = {d}':<{width}}  {desc}".rstrip() for k, d, desc in rows)


__all__ = ["ConfigError", "apply_overrides", "config_fields", "field_help", "from_dict", "load_config",
           "load_yaml", "save_config", "show_value", "to_dict"]


# =================================================================================================
# The run configs. Sections are flat dataclasses of scalars; comments give meaning and source.
# [P] = stated in the DOPD paper (docs/method.md); [D] = project decision.
# =================================================================================================
from dataclasses import dataclass  # noqa: E402

from dopd_vlm.fields import opt  # noqa: E402
from dopd_vlm.routing import RoutingConfig  # noqa: E402

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    model_name_or_path: str = opt("", "the student checkpoint: a local HF folder, a Hub id, or tiny:<family> [D]")
    teacher_model_name_or_path: str = opt("", "the frozen privileged teacher; same tokenizer family as the student [P §1]")
    dtype: str = opt("float32", "student weights dtype: float32 | bfloat16 | float16; bfloat16 + run.mixed_precision=bf16 on GPUs [D]")
    teacher_dtype: str = opt("", "teacher weights dtype; \"\" = same as dtype [D]")
    teacher_device: str = opt("", "device of the frozen teacher; \"\" = the student's device, \"cpu\" offloads it [D]")
    trust_remote_code: bool = opt(False, "run Python code shipped inside a checkpoint (true/false only); off unless asked [D security]")
    attn_implementation: str = opt("", "attention kernel: \"\" = the transformers default, or sdpa | eager | flash_attention_2 [D]")
    chat_template_kwargs: dict[str, Any] = opt(help="keyword arguments of every chat-template call (views, rollouts, scoring), e.g. {enable_thinking: false}; {} = the template's defaults [D]; paper presets: non-thinking [P §6]", factory=dict)
    gradient_checkpointing: bool = opt(False, "recompute student activations in backward: less memory, more compute [D]")
    freeze_vision: bool = opt(False, "freeze the student's vision tower (the paper does not say); tiny presets freeze it [D docs/method.md §6]")
    vision_lr_scale: float = opt(1.0, "vision-tower learning rate = optim.lr * scale; 0 freezes it [D docs/method.md §6]")
    use_peft: bool = opt(False, "train LoRA adapters through peft instead of all weights [D]")
    lora_r: int = opt(16, "LoRA rank [D]")
    lora_alpha: int = opt(32, "LoRA alpha (scaling = alpha / r) [D]")
    lora_dropout: float = opt(0.05, "dropout on the LoRA branch [D]")
    lora_target_modules: str = opt("all-linear", "modules that get LoRA: peft's all-linear keyword, or comma-separated module names [D]")

    def __post_init__(self):
        for name in ("dtype",) + (("teacher_dtype",) if self.teacher_dtype else ()):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if self.vision_lr_scale < 0:
            raise ValueError(f"vision_lr_scale must be >= 0, got {self.vision_lr_scale}")
        # YAML here reads yes/no/on/off as text (module docstring); a chat template tests
        # `enable_thinking is false`, so the string "no" would silently leave thinking on
        for k, v in self.chat_template_kwargs.items():
            if isinstance(v, str) and v.strip().lower() in ("yes", "no", "on", "off", "y", "n", "true", "false"):
                raise ValueError(f"chat_template_kwargs.{k}: {v!r} is text, not a boolean (a chat template "
                                 f"would read any text as true); write {k}: true or {k}: false")


@dataclass
class DataConfig:
    dataset_path: str = opt("", "a `datasets` save_to_disk folder of records (dopd-vlm build), or synthetic:<layout> [D]")
    split: str = opt("train", "split to train on when the folder holds a DatasetDict [D]")
    privileged_kinds: list[str] = opt(help="privileged signals rendered into p, in order (regions, captions, hints, ...); boxes + labels are best for VLMs [P §7]",
                                      factory=lambda: ["regions"])
    max_samples: int = opt(0, "use only the first N records; 0 = all records [D]")
    shuffle: bool = opt(True, "reshuffle the records each epoch from optim.seed [D]")
    max_empty_privileged_share: float = opt(1.0, "refuse to train when more than this share of rows renders an empty privileged context (all rows empty always refuses; any empty row warns) [D]")

    def __post_init__(self):
        if self.max_samples < 0:
            raise ValueError(f"max_samples must be >= 0, got {self.max_samples}")
        if not 0.0 <= self.max_empty_privileged_share <= 1.0:
            raise ValueError(f"max_empty_privileged_share must be in [0, 1], got {self.max_empty_privileged_share}")
        from dopd_vlm.privileged import canonical_kind

        for k in self.privileged_kinds:
            canonical_kind(k)


@dataclass
class RolloutConfig:
    num_generations: int = opt(4, "G: responses sampled from the plain student per prompt [P §6: G = 4]")
    max_new_tokens: int = opt(256, "longest sampled response, in tokens [D]")
    temperature: float = opt(1.0, "sampling temperature of the rollouts (not of the loss) [D docs/method.md §6]")
    top_p: float = opt(1.0, "nucleus sampling mass; 1.0 = off [D]")
    top_k: int = opt(0, "sample only from the k most likely tokens; 0 = off [D]")
    engine: str = opt("hf", "rollout engine: hf (transformers generate) | vllm (needs the vllm extra, GPUs) [D]")
    # the vLLM engine (dopd_vlm/vllm_rollout.py; README "vLLM")
    vllm_gpu_memory_utilization: float = opt(0.3, "share of each GPU the colocated vLLM engine takes for weights + KV cache (vLLM's gpu_memory_utilization) [D]")
    vllm_cpu_kv_cache_gb: float = opt(1.0, "KV-cache GiB of a vLLM engine on CPU (VLLM_CPU_KVCACHE_SPACE; unless that is set) [D]")
    vllm_max_model_len: int = opt(0, "vLLM context length in tokens; 0 = the model's own [D]")
    vllm_enforce_eager: bool = opt(False, "run vLLM without CUDA graphs (faster start, slower decoding) [D]")
    server_url: str = opt("", "base URL of a vLLM OpenAI-compatible server to sample from (started with VLLM_SERVER_DEV_MODE=1); \"\" = a colocated engine [D]")
    server_model: str = opt("", "model name the server must serve (its --served-model-name); \"\" = the student's path [D]")
    server_weights_dir: str = opt("", "folder the trainer writes the weights the server reloads after each step (the server must see it); \"\" = <run.output_dir>/rollout_weights [D]")
    server_timeout_s: float = opt(600.0, "seconds to wait for one server request [D]")

    def __post_init__(self):
        if self.num_generations < 1 or self.max_new_tokens < 1:
            raise ValueError("num_generations and max_new_tokens must be >= 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.engine not in ("hf", "vllm"):
            raise ValueError(f"engine must be 'hf' or 'vllm', got {self.engine!r}")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}")
        if self.server_url and self.engine != "vllm":
            raise ValueError("server_url is set: it needs engine=vllm")


@dataclass
class OptimConfig:
    lr: float = opt(5e-6, "AdamW peak learning rate [P §5 setup]")
    weight_decay: float = opt(0.0, "AdamW weight decay [D]")
    adam_beta1: float = opt(0.9, "AdamW beta1 [D torch default]")
    adam_beta2: float = opt(0.999, "AdamW beta2 [D torch default]")
    warmup_ratio: float = opt(0.03, "fraction of max_steps spent in linear warmup before the cosine decay [P cosine; D warmup]")
    max_steps: int = opt(300, "optimiser steps (one per rollout batch) [P §6: 300 VLM / 200 LLM]")
    prompts_per_step: int = opt(64, "P: prompts per optimiser step, over all processes [P §6: 64 VLM / 128 LLM]")
    micro_batch_size: int = opt(0, "sequences per backward (gradient accumulation); 0 = the whole step at once [D]")
    max_grad_norm: float = opt(1.0, "gradient-norm clip; 0 = no clipping [D]")
    seed: int = opt(0, "seed of sampling and data order (each process adds its rank) [D]")

    def __post_init__(self):
        if self.lr <= 0 or self.max_steps < 1 or self.prompts_per_step < 1 or self.micro_batch_size < 0:
            raise ValueError("lr > 0, max_steps >= 1, prompts_per_step >= 1, micro_batch_size >= 0 required")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class RunConfig:
    output_dir: str = opt("runs/dopd", "folder for config.yaml, metrics, samples, plots and checkpoints [D]")
    mixed_precision: str = opt("no", "accelerate mixed precision: no | bf16 | fp16; bf16 on GPUs [D]")
    loss_impl: str = opt("dense", "dense (full logits) | lean (chunked from hidden states; routing.lean_* set the chunks) [D]")
    log_every: int = opt(1, "append a metrics.jsonl line every N steps [D]")
    sample_every: int = opt(1, "write decoded samples + per-token regimes every N steps; 0 = never [D]")
    save_every: int = opt(0, "save a checkpoint every N steps; 0 = only at the end [D]")
    save_total_limit: int = opt(2, "keep the last N checkpoints [D]")
    resume_from: str = opt("", "resume from a checkpoint folder, or \"latest\" (in output_dir); \"\" = start fresh [D]")
    report_to: list[str] = opt(help="experiment trackers through accelerate: tensorboard | wandb | trackio; the package must be installed [D]",
                               factory=list)
    max_bad_steps: int = opt(3, "stop after N non-finite losses in a row (each skips its update) [D]")
    stop_after_step: int = opt(0, "stop with a checkpoint after this step; 0 = run to max_steps (for tests and resume drills) [D]")
    plots: bool = opt(True, "write plots/*.png and tokens.html at the end [D]")
    overwrite: bool = opt(False, "a fresh run into an output_dir that holds a run deletes that run's checkpoints, logs and plots first; false = refuse [D RELIABILITY.md]")
    allow_config_change: bool = opt(False, "resume although the config changes the run (table, data, optimiser, schedule, models); the change is logged in config_changes.jsonl; false = refuse [D RELIABILITY.md]")

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

    table: str = opt("dopd", "routing table: the method (dopd, vanilla_opd, opd_priv_teacher, opsd, gkd, sdft, ablations) [P §8]")
    model: ModelConfig = opt(help="student and teacher checkpoints, dtypes, LoRA", factory=ModelConfig)
    data: DataConfig = opt(help="the built dataset and the privileged signals", factory=DataConfig)
    rollout: RolloutConfig = opt(help="sampling the student's responses", factory=RolloutConfig)
    routing: RoutingConfig = opt(help="token statistics, thresholds, regimes' divergence options", factory=RoutingConfig)
    optim: OptimConfig = opt(help="optimiser, schedule, batch sizes", factory=OptimConfig)
    run: RunConfig = opt(help="outputs, precision, logging, checkpoints", factory=RunConfig)

    def __post_init__(self):
        from dopd_vlm.tables import get_table

        get_table(self.table)


@dataclass
class SFTDataConfig:
    dataset_path: str = opt("", "a `datasets` save_to_disk folder of records (dopd-vlm build), or synthetic:<layout> [D]")
    split: str = opt("train", "split to train on when the folder holds a DatasetDict [D]")
    view: str = opt("plain", "the prompt trained on: plain | privileged | mixed (alternate per step) [D]")
    privileged_kinds: list[str] = opt(help="privileged signals rendered into the privileged view, in order [P §7: regions]",
                                      factory=lambda: ["regions"])
    target: str = opt("answer", "the supervised response: answer | solution (privileged.solution) [D]")
    max_samples: int = opt(0, "use only the first N records; 0 = all records [D]")
    max_empty_privileged_share: float = opt(1.0, "view privileged | mixed: refuse when more than this share of rows renders an empty privileged context (all rows empty always refuses; any empty row warns) [D, as in train]")

    def __post_init__(self):
        if not 0.0 <= self.max_empty_privileged_share <= 1.0:
            raise ValueError(f"max_empty_privileged_share must be in [0, 1], got {self.max_empty_privileged_share}")
        if self.view not in ("plain", "privileged", "mixed"):
            raise ValueError(f"view must be plain|privileged|mixed, got {self.view!r}")
        if self.target not in ("answer", "solution"):
            raise ValueError(f"target must be answer|solution, got {self.target!r}")


@dataclass
class SFTOptimConfig:
    lr: float = opt(1e-5, "AdamW peak learning rate [D]")
    weight_decay: float = opt(0.0, "AdamW weight decay [D]")
    warmup_ratio: float = opt(0.03, "fraction of max_steps spent in linear warmup before the cosine decay [D]")
    max_steps: int = opt(1000, "optimiser steps [D]")
    batch_size: int = opt(16, "records per step on each process [D]")
    max_grad_norm: float = opt(1.0, "gradient-norm clip; 0 = no clipping [D]")
    seed: int = opt(0, "seed of the data order and initialisation [D]")
    time_budget_s: float = opt(0.0, "stop after this many seconds; 0 = off (for CPU warm starts) [D]")

    def __post_init__(self):
        if self.lr <= 0 or self.max_steps < 1 or self.batch_size < 1:
            raise ValueError("lr > 0, max_steps >= 1, batch_size >= 1 required")


@dataclass
class SFTConfig:
    """`dopd-vlm sft` — supervised warm-start of a student or a teacher."""

    model: ModelConfig = opt(help="the checkpoint to fine-tune, dtypes, LoRA", factory=ModelConfig)
    data: SFTDataConfig = opt(help="the built dataset, the view and the target", factory=SFTDataConfig)
    optim: SFTOptimConfig = opt(help="optimiser, schedule, batch size, time budget", factory=SFTOptimConfig)
    run: RunConfig = opt(help="outputs, precision, logging, checkpoints",
                         factory=lambda: RunConfig(output_dir="runs/sft", sample_every=0))
