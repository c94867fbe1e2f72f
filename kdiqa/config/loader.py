"""Load a recipe: merge its bases, apply ``key=value`` overrides, validate, save the resolved copy.

YAML goes through OmegaConf's loader (a yaml.SafeLoader: no tags, no code); the merged result is
checked against the dataclass schema so that a typo fails here, in one line naming the key path,
instead of an hour into a run.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from kdiqa.config.schema import Recipe
from kdiqa.errors import ConfigError
from kdiqa.io import atomic_path

# the installed kdiqa package: built-in recipes (kdiqa/recipes) and shipped weights (kdiqa/teachers/...)
# are package data, found here from any working directory and from a non-editable install
PACKAGE_ROOT = Path(str(resources.files("kdiqa")))
RECIPES_DIR = PACKAGE_ROOT / "recipes"


def resolve_packaged_path(path: str | Path) -> Path:
    """``path`` as given if it exists (or is absolute), else inside the kdiqa package if it exists there.

    Why: recipes name shipped weights as ``teachers/dpiqa/weights/...``, the package's own layout, and
    must find them from any working directory.
    """
    path = Path(path).expanduser()
    if path.exists() or path.is_absolute():
        return path
    packaged = PACKAGE_ROOT / path
    return packaged if packaged.exists() else path


def find_recipe(name: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe path as given, relative to an including recipe, or a built-in one: ``quickstart``,
    ``dpiqa/koniq10k`` or ``recipes/dpiqa/koniq10k.yaml`` (the package's own layout)."""
    name = Path(name)
    candidates = [name] if name.is_absolute() else []
    if not name.is_absolute():
        if relative_to is not None:
            candidates.append(relative_to / name)
        builtin = name.relative_to("recipes") if name.parts[:1] == ("recipes",) else name
        candidates += [name, RECIPES_DIR / builtin]
        if name.suffix not in (".yaml", ".yml"):
            candidates.append(RECIPES_DIR / builtin.with_suffix(".yaml"))
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise ConfigError(f"recipe {str(name)!r} not found (looked in {', '.join(dict.fromkeys(str(c.parent) for c in candidates))})")


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


def _override_key(item: str) -> str:
    """The key an override sets (``key=value``) or removes (``~key``, ``~key=value``); ConfigError if malformed."""
    body = item[1:] if item.startswith("~") else item
    key = body.split("=", 1)[0]
    if not key or key != key.strip() or ("=" not in body and not item.startswith("~")):
        raise ConfigError(f"override {item!r}: expected key=value (or ~key to remove a key), e.g. trainer.max_epochs=5")
    return key


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        _override_key(item)
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"overrides: {str(exc).splitlines()[0]}") from None


def _remove(cfg: DictConfig, item: str) -> None:
    """``~key`` (Hydra's syntax): remove ``key``; ``~key=value`` removes it only if it holds ``value``.

    Why: merging ``data.options={}`` keeps the keys a base recipe set (the quickstart's ``n_train``
    follows a user to their own dataset); removing them first makes a replacement possible
    (``~data.options data.options={file: x.csv}``). A key of the schema itself cannot disappear: it
    goes back to its default.
    """
    key = _override_key(item)
    expected = item.split("=", 1)[1] if "=" in item else None
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        raise ConfigError(f"override {item!r}: there is no key {key!r} to remove")
    if expected is not None:
        current = OmegaConf.to_container(parent, resolve=True)[leaf]
        if str(current) != str(yaml.safe_load(expected)) and str(current) != expected:
            raise ConfigError(f"override {item!r}: {key!r} is {current!r}, not {expected!r}; nothing removed")
    schema = OmegaConf.get_type(parent)
    if dataclasses.is_dataclass(schema):
        fields = {f.name: f for f in dataclasses.fields(schema)}
        default = fields[leaf].default_factory() if fields[leaf].default_factory is not dataclasses.MISSING else fields[leaf].default  # type: ignore[misc]
        parent[leaf] = OmegaConf.structured(default) if dataclasses.is_dataclass(default) else default
    else:
        del parent[leaf]


def _apply_overrides(merged: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply ``key=value`` and ``~key`` overrides in order (a removal then a setting replaces a value)."""
    for item in overrides:
        if item.startswith("~"):
            _remove(merged, item)
        else:
            merged = OmegaConf.merge(merged, _parse_overrides([item]))
    return merged


def _missing_values(cfg: Any, prefix: str = "") -> set[str]:
    """Keys holding ``???``, found without resolving interpolations (a broken one is reported later,
    by the schema check, with its own message)."""
    found: set[str] = set()
    if isinstance(cfg, DictConfig):
        items = [(str(k), f"{prefix}.{k}" if prefix else str(k)) for k in cfg.keys()]
    elif isinstance(cfg, ListConfig):
        items = [(i, f"{prefix}[{i}]") for i in range(len(cfg))]
    else:
        return found
    for key, full in items:
        node = cfg._get_node(key)
        if isinstance(node, (DictConfig, ListConfig)):
            found |= _missing_values(node, full) if not node._is_missing() else {full}
        elif node is not None and node._is_missing():
            found.add(full)
    return found


def _unfilled(tree: DictConfig, merged: DictConfig, overrides: Sequence[str], needs: Sequence[str] | None) -> list[str]:
    """Required values (``???``) no override filled, among the keys under ``needs`` (all if None).

    Why the recipe tree is searched too: a ``???`` merged onto a schema default (``teacher.checkpoint:
    ???``, default None) leaves the default in place, so a released recipe would load with no
    checkpoint instead of asking for one.
    """
    set_keys = [_override_key(item) for item in overrides]
    missing = _missing_values(tree) | _missing_values(merged)
    missing = {k for k in missing if not any(k == s or k.startswith(s + ".") or k.startswith(s + "[") for s in set_keys)}
    if needs is not None:
        missing = {k for k in missing if any(k == n or k.startswith(n + ".") or k.startswith(n + "[") for n in needs)}
    return sorted(missing)


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
    """Run every section's ``check(at)`` with the key path it is reached by, then the recipe's
    ``check_across()`` (rules that join two sections, once each section is valid on its own)."""
    if dataclasses.is_dataclass(obj):
        if hasattr(obj, "check") and at:
            obj.check(at)
        for f in dataclasses.fields(obj):
            check_recipe(getattr(obj, f.name), f"{at}.{f.name}" if at else f.name)
        if hasattr(obj, "check_across") and not at:
            obj.check_across()
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            check_recipe(item, f"{at}[{i}]")


def load_recipe(recipe: str | Path, overrides: Sequence[str] = (), needs: Sequence[str] | None = None) -> Recipe:
    """Load, merge and validate a recipe; raises ConfigError naming the key at fault.

    ``overrides``: ``key=value`` (merged) and ``~key`` (removed), applied in order. A required value
    (``???``) that no override fills is an error, for the keys under ``needs`` (default: every key;
    ``kdiqa data info`` needs only ``data`` and ``views``); the others fall back to their defaults.
    """
    path = find_recipe(recipe)
    tree, bases = _load_tree(path, ())
    source = str(path)
    for item in overrides:
        _override_key(item)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Recipe), tree)
    except OmegaConfBaseException as exc:
        raise _explain(exc, source) from None
    try:
        merged = _apply_overrides(merged, overrides)
    except OmegaConfBaseException as exc:
        raise _explain(exc, "override") from None
    unfilled = _unfilled(tree, merged, overrides, needs)
    if unfilled:
        raise ConfigError(f"{source}: missing required value {unfilled[0]!r} (give it on the command line, e.g. {unfilled[0]}=...)")
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
    path = Path(path)
    with atomic_path(path, "the resolved recipe") as tmp:
        tmp.write_text(recipe_to_yaml(recipe))
    return path
