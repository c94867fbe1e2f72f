"""Load a recipe: merge its bases, apply ``key=value`` overrides, validate, save the resolved copy.

YAML goes through OmegaConf's loader (a yaml.SafeLoader: no tags, no code); the merged result is
checked against the dataclass schema so that a typo fails here, in one line naming the key path,
instead of an hour into a run.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from kdiqa.config.schema import Recipe
from kdiqa.errors import ConfigError

# the folder holding the kdiqa, teachers and recipes packages (a checkout, or site-packages)
INSTALL_ROOT = Path(__file__).resolve().parents[2]
RECIPES_DIR = INSTALL_ROOT / "recipes"


def resolve_packaged_path(path: str | Path) -> Path:
    """``path`` as given if it exists (or is absolute), else inside the installation if it exists there.

    Why: recipes name shipped weights (``teachers/dpiqa/weights/...``) relative to the repository, and
    must find them from any working directory and from a non-editable install.
    """
    path = Path(path).expanduser()
    if path.exists() or path.is_absolute():
        return path
    packaged = INSTALL_ROOT / path
    return packaged if packaged.exists() else path


def find_recipe(name: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe path as given, relative to an including recipe, or a name under ``recipes/``."""
    name = Path(name)
    candidates = [name] if name.is_absolute() else []
    if not name.is_absolute():
        if relative_to is not None:
            candidates.append(relative_to / name)
        candidates += [name, RECIPES_DIR / name]
        if name.suffix not in (".yaml", ".yml"):
            candidates.append(RECIPES_DIR / name.with_suffix(".yaml"))
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise ConfigError(f"recipe {str(name)!r} not found (looked in {', '.join(str(c.parent) for c in candidates)})")


def _read_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys, found a {type(cfg).__name__}")
    return cfg


def _load_tree(path: Path, chain: tuple[Path, ...]) -> tuple[DictConfig, list[str]]:
    """The recipe at ``path`` merged over its bases (depth first, in order)."""
    if path in chain:
        cycle = " -> ".join(str(p.name) for p in (*chain, path))
        raise ConfigError(f"{path}: base recipes form a cycle ({cycle})")
    cfg = _read_yaml(path)
    bases = cfg.pop("base", []) or []
    if isinstance(bases, str):
        bases = [bases]
    if not OmegaConf.is_list(bases) and not isinstance(bases, list):
        raise ConfigError(f"{path}: base: must be a list of recipe paths")
    merged = OmegaConf.create({})
    used: list[str] = []
    for base in bases:
        base_path = find_recipe(str(base), relative_to=path.parent)
        base_cfg, base_used = _load_tree(base_path, (*chain, path))
        merged = OmegaConf.merge(merged, base_cfg)
        used += [*base_used, str(base_path)]
    return OmegaConf.merge(merged, cfg), used


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or not key or key != key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. trainer.max_epochs=5")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"overrides: {str(exc).splitlines()[0]}") from None


def _schema_fields(full_key: str) -> list[str]:
    """Valid key names beside ``full_key`` in the schema, for 'did you mean' hints."""
    node: Any = Recipe
    for part in full_key.split(".")[:-1]:
        part = part.split("[")[0]
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return []
        default = fields[part].default_factory() if fields[part].default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        node = type(default) if dataclasses.is_dataclass(default) else None
        if node is None:
            return []
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def _explain(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    first = str(exc).splitlines()[0]
    if isinstance(exc, ConfigKeyError):
        leaf = str(key).split(".")[-1]
        close = difflib.get_close_matches(leaf, _schema_fields(str(key)), n=1, cutoff=0.5)
        hint = f"; did you mean {'.'.join(str(key).split('.')[:-1] + close)!r}?" if close else ""
        return ConfigError(f"{source}: unknown key {key!r}{hint}")
    if isinstance(exc, MissingMandatoryValue):
        return ConfigError(f"{source}: missing required value {key!r}")
    if isinstance(exc, InterpolationResolutionError):
        return ConfigError(f"{source}: key {key!r}: cannot resolve interpolation ({first})")
    if isinstance(exc, ValidationError):
        return ConfigError(f"{source}: key {key!r}: {first}")
    return ConfigError(f"{source}: {first}")


def check_recipe(obj: Any, at: str = "") -> None:
    """Run every section's ``check(at)`` with the key path it is reached by."""
    if dataclasses.is_dataclass(obj):
        if hasattr(obj, "check") and at:
            obj.check(at)
        for f in dataclasses.fields(obj):
            check_recipe(getattr(obj, f.name), f"{at}.{f.name}" if at else f.name)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            check_recipe(item, f"{at}[{i}]")


def load_recipe(recipe: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Load, merge and validate a recipe; raises ConfigError naming the key at fault."""
    path = find_recipe(recipe)
    tree, bases = _load_tree(path, ())
    source = str(path)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Recipe), tree)
    except OmegaConfBaseException as exc:
        raise _explain(exc, source) from None
    try:
        merged = OmegaConf.merge(merged, _parse_overrides(overrides))
    except OmegaConfBaseException as exc:
        raise _explain(exc, "override") from None
    merged.base = bases
    try:
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _explain(exc, source) from None
    check_recipe(obj)
    return obj  # type: ignore[return-value]


def recipe_to_yaml(recipe: Recipe) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(recipe))


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write the fully resolved recipe, so a run folder says exactly what ran."""
    from kdiqa.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(recipe_to_yaml(recipe))
    return path
