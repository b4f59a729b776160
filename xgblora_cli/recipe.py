"""Typed recipe settings: YAML loading, ``dotted.key=value`` overrides, validation, method presets.

A recipe is plain data. Every field is checked for its type on load and for its range in
``__post_init__``; a bad value raises :class:`RecipeError` naming the key, which the loader turns
into a :class:`UserError` that also names the file. Nothing here imports torch.

XGBLoRA, COLA and LoRA are *presets*: default values of ``rank``, ``layers_per_booster`` and the
number of boosters, for one and the same boosting loop (see ``docs`` in the README).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from xgblora_cli.errors import UserError
from xgblora_cli.prompts import TEMPLATES

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DTYPES = ("float32", "bfloat16", "float16")
SCORINGS = ("label", "loglik", "generate")
QUANTIZATIONS = ("none", "4bit", "8bit")
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Preset:
    """Defaults of one method. Exactly one of ``steps_per_booster`` / ``boosters`` is set.

    ``learning_rate`` is the method's default ``train.learning_rate``: boosters that live ten steps need a far
    larger rate than one adapter trained for the whole run (measured in docs/benchmarks.md).
    """

    rank: int
    layers_per_booster: int | str
    learning_rate: float
    steps_per_booster: int | None = None
    boosters: int | None = None


PRESETS: dict[str, Preset] = {
    # Rank-1 boosters on a few random blocks, merged often (the paper's method).
    "xgblora": Preset(rank=1, layers_per_booster=4, learning_rate=3e-3, steps_per_booster=10),
    # Chain of LoRA: a few long rank-8 boosters over every block.
    "cola": Preset(rank=8, layers_per_booster="all", learning_rate=3e-4, boosters=3),
    # Plain LoRA: one booster over every block for the whole run, merged at export.
    "lora": Preset(rank=8, layers_per_booster="all", learning_rate=3e-4, boosters=1),
}


class RecipeError(ValueError):
    """A bad value for ``key``; the loader adds the file name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise RecipeError(key, message)


@dataclass
class TrainArgs:
    """The optimisation settings of a run (the ``train:`` block)."""

    max_steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float | None = None  # None: the method preset's rate (filled in by Recipe)
    warmup_steps: int = 0
    rewarmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_seq_len: int = 512
    gradient_checkpointing: bool = False
    checkpoint_every: int = 25
    snapshot_every: int = 0  # 0: none; else keep the state every N steps for `eval/merge --step N` (learning curves)
    log_every: int = 1
    max_failed_boosters: int = 3

    def __post_init__(self) -> None:
        for key in ("max_steps", "batch_size", "grad_accum", "max_seq_len", "checkpoint_every", "log_every", "max_failed_boosters"):
            _require(getattr(self, key) >= 1, f"train.{key}", f"must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "rewarmup_steps", "snapshot_every"):
            _require(getattr(self, key) >= 0, f"train.{key}", f"must be >= 0, got {getattr(self, key)}")
        _require(self.learning_rate is None or self.learning_rate > 0, "train.learning_rate", f"must be > 0, got {self.learning_rate}")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.max_grad_norm >= 0, "train.max_grad_norm", f"must be >= 0 (0 = no clipping), got {self.max_grad_norm}")
        _require(self.max_seq_len >= 8, "train.max_seq_len", f"must be >= 8, got {self.max_seq_len}")


@dataclass
class EvalArgs:
    """What ``xgblora eval RUN_DIR`` runs when no ``--task`` is given (the ``eval:`` block)."""

    tasks: list[str] = field(default_factory=list)
    data: str = ""
    limit: int | None = None
    shots: int = 0
    scoring: str = "label"

    def __post_init__(self) -> None:
        _require(self.limit is None or self.limit >= 1, "eval.limit", f"must be >= 1, got {self.limit}")
        _require(0 <= self.shots <= 5, "eval.shots", f"must be in 0..5, got {self.shots}")
        _require(self.scoring in SCORINGS, "eval.scoring", f"must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")


@dataclass
class Recipe:
    """A whole training recipe (the top level of the YAML file)."""

    model: str
    dataset: str
    output_dir: str
    method: str = "xgblora"
    rank: int | None = None
    alpha: float | None = None
    layers_per_booster: int | str | None = None
    steps_per_booster: int | None = None
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    dtype: str = "float32"
    quantization: str = "none"
    seed: int = 0
    dataset_split: str = "train"
    prompt_template: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    train: TrainArgs = field(default_factory=TrainArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)

    def __post_init__(self) -> None:
        _require(self.method in PRESETS, "method", f"must be one of {', '.join(PRESETS)}, got {self.method!r}")
        _require(self.rank is None or self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
        _require(self.alpha is None or self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        k = self.layers_per_booster
        _require(
            k is None or k == "all" or (isinstance(k, int) and k >= 1),
            "layers_per_booster",
            f"must be an integer >= 1 or 'all', got {k!r}",
        )
        kappa = self.steps_per_booster
        _require(kappa is None or kappa >= 1, "steps_per_booster", f"must be >= 1, got {kappa}")
        _require(
            kappa is None or kappa <= self.train.max_steps,
            "steps_per_booster",
            f"must be <= train.max_steps ({self.train.max_steps}), got {kappa}",
        )
        _require(len(self.target_modules) > 0, "target_modules", "must name at least one module, e.g. [q_proj, v_proj]")
        _require(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _require(self.quantization in QUANTIZATIONS, "quantization", f"must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        _require(self.prompt_template in TEMPLATES, "prompt_template", f"must be one of {', '.join(TEMPLATES)}, got {self.prompt_template!r}")
        _require(bool(DEVICE.match(self.device)), "device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for key in ("model", "dataset", "output_dir"):
            _require(bool(getattr(self, key).strip()), key, "must not be empty")
        if self.train.learning_rate is None:
            self.train.learning_rate = PRESETS[self.method].learning_rate

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BoosterPlan:
    """The concrete boosting schedule of a recipe on a model with ``num_layers`` blocks."""

    rank: int
    alpha: float
    layers_per_booster: int
    steps_per_booster: int
    num_boosters: int
    num_layers: int

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def resolve_plan(recipe: Recipe, num_layers: int) -> BoosterPlan:
    """Fill the unset values from the method preset and check them against the model's depth."""
    preset = PRESETS[recipe.method]
    rank = recipe.rank if recipe.rank is not None else preset.rank
    alpha = recipe.alpha if recipe.alpha is not None else 2.0 * rank
    k = recipe.layers_per_booster if recipe.layers_per_booster is not None else preset.layers_per_booster
    k = num_layers if k == "all" else int(k)
    if k > num_layers:
        raise RecipeError("layers_per_booster", f"must be <= the model's {num_layers} blocks, got {k}")
    steps = recipe.train.max_steps
    if recipe.steps_per_booster is not None:
        kappa = recipe.steps_per_booster
    elif preset.steps_per_booster is not None:
        kappa = min(preset.steps_per_booster, steps)
    else:
        kappa = math.ceil(steps / preset.boosters)
    return BoosterPlan(rank, float(alpha), k, kappa, math.ceil(steps / kappa), num_layers)


# ----------------------------------------------------------------------------- loading


def _type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return "a list of strings"
    return names.get(hint, str(hint))


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type hint, converting the few safe cases (``1e-4`` strings)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except RecipeError:
                continue
        raise RecipeError(key, f"expected {_type_name(hint)}, got {value!r}")
    if typing.get_origin(hint) is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise RecipeError(key, f"expected a list of strings, got {value!r}")
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    if hint is str and isinstance(value, str):
        return value
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RecipeError(key, f"expected {_type_name(hint)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Make dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; allowed: {', '.join(names)}"
            raise RecipeError(full, f"unknown key{hint}")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise RecipeError(full, f"expected a mapping of settings, got {value!r}")
            kwargs[key] = _build(hints[key], value, f"{full}.")
        else:
            kwargs[key] = _coerce(full, value, hints[key])
    missing = [
        n for f in dataclasses.fields(cls) if (n := f.name) not in kwargs
        and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise RecipeError(f"{prefix}{missing[0]}", "is required")
    return cls(**kwargs)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``dotted.key=value`` in the nested dict ``data``; the value is parsed as YAML."""
    if "=" not in override:
        raise RecipeError(override, "an override must look like dotted.key=value, e.g. train.max_steps=50")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(key, "an override must look like dotted.key=value")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(key, f"'{part}' is not a block of settings")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = raw


def recipe_from_dict(data: dict[str, Any], source: str, overrides: list[str] = ()) -> Recipe:  # type: ignore[assignment]
    """Build a validated recipe from parsed YAML plus overrides; errors name ``source`` and the key."""
    data = copy.deepcopy(data)
    try:
        for override in overrides:
            apply_override(data, override)
    except RecipeError as err:
        raise UserError(f"override {err.key!r}: {err.message}") from None
    try:
        return _build(Recipe, data, "")
    except RecipeError as err:
        raise UserError(f"{source}: {err.key}: {err.message}") from None


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:  # type: ignore[assignment]
    """Read a YAML recipe safely and validate it; relative data paths are resolved later."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of settings (key: value), got {type(data).__name__}")
    recipe = recipe_from_dict(data, str(path), overrides)
    recipe.model = _near(recipe.model, path.parent)
    recipe.dataset = _near(recipe.dataset, path.parent)
    if recipe.eval.data:
        recipe.eval.data = _near(recipe.eval.data, path.parent)
    return recipe


def _near(value: str, recipe_dir: Path) -> str:
    """A relative path that is missing from the working directory but exists beside the recipe."""
    candidate = recipe_dir / value
    if not Path(value).is_absolute() and not Path(value).exists() and candidate.exists():
        return str(candidate)
    return value


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
