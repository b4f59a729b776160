"""Recipe files: safe YAML loading, ``dotted.key=value`` overrides, type checks with one-line errors, and back.

Every field is checked for its type here and for its range in the settings' ``__post_init__``
(:mod:`xgblora_cli.recipe`); a bad value raises a :class:`UserError` naming the file and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from xgblora_cli.common.errors import UserError
from xgblora_cli.recipe import Recipe, RecipeError


def _type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return "a list of strings"
    if typing.get_origin(hint) is dict:
        return "a mapping"
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
    if typing.get_origin(hint) is dict:
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
        raise RecipeError(key, f"expected a mapping of names to names, e.g. {{instruction: question}}, got {value!r}")
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
    """Read a YAML recipe safely and validate it. Local paths become absolute (a relative one is taken from the
    working directory, or from beside the recipe when only there), so a run directory's stored recipe works from
    anywhere (``xgblora eval RUN``, ``--resume``); hub ids and aliases stay as written."""
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
    recipe.model = _local_path(recipe.model, path.parent)
    recipe.dataset = _local_path(recipe.dataset, path.parent)
    if recipe.eval.data:
        recipe.eval.data = _local_path(recipe.eval.data, path.parent)
    recipe.output_dir = str(Path(recipe.output_dir).expanduser().absolute())
    return recipe


def _local_path(value: str, recipe_dir: Path) -> str:
    """``value`` as an absolute path if it names an existing file or folder (from the working directory, else
    beside the recipe); anything else (a hub id, an alias, a missing path for a later error) unchanged."""
    path = Path(value).expanduser()
    for candidate in (path, recipe_dir / path):
        if candidate.exists():
            return str(candidate.absolute())
    return value


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
