"""One base for every saved model, teachers and students alike (diffusers' ModelMixin + ConfigMixin).

A saved model is a folder of two files: :data:`CONFIG_NAME` (``{"teacher" | "student": registry name,
"config": constructor arguments, "kdiqa_version": ...}``) and :data:`WEIGHTS_NAME` (the state dict).
That is enough to rebuild it without its recipe: the name goes through the registry, the config is
passed to the constructor, the weights are loaded strictly.

The config is the constructor's arguments, recorded by the base before ``__init__`` runs (defaults
filled in), so no class builds it by hand; a constructor that resolves an argument (a preset into
its full U-Net config, a size into a canonical form) passes the resolved value to
``super().__init__(key=value)``. A loaded model keeps the config it was saved with, so the files and
the model always agree (the cache's teacher fingerprint is computed from either).

Recipes reach a model through ``from_options`` (what the registry calls): the constructor takes the
architecture only; a class whose recipe options may name a weight file overrides ``from_options`` and
hands that file to one of its ``from_*`` class methods.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from kdiqa import __version__
from kdiqa.errors import CheckpointError, KdiqaError
from kdiqa.io import read_json, read_safetensors, save_weights, write_json
from kdiqa.registry import Registry

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ModelMixin(nn.Module):
    """Config capture, ``save_pretrained`` and ``from_pretrained`` for a registered model class."""

    name: ClassVar[str] = ""  # the registry name, saved in the config file
    saved_as: ClassVar[str] = ""  # "teacher" or "student": the config file's key for the name
    registry: ClassVar[Registry]
    # recipe options that name a weight file (``from_options`` hands them to a ``from_*`` method); configs
    # saved by older versions hold them, and a saved model's own weights supersede them
    weight_options: ClassVar[tuple[str, ...]] = ()

    config: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> ModelMixin:
        # recorded here, before __init__ and without wrapping it, so a bad keyword stays the constructor's own error
        model = super().__new__(cls)
        signature = inspect.signature(cls.__init__)
        model.config = {}
        try:
            bound = signature.bind(model, *args, **kwargs)
        except TypeError:  # a bad argument: the __init__ call reports it, as for any class
            return model
        bound.apply_defaults()
        for key, param in list(signature.parameters.items())[1:]:
            if param.kind is param.VAR_KEYWORD:
                model.config.update(bound.arguments[key])
            elif param.kind is not param.VAR_POSITIONAL:
                model.config[key] = bound.arguments[key]
        return model

    def __init__(self, **resolved: Any):
        super().__init__()
        self.config.update(resolved)

    @classmethod
    def from_options(cls, **options: Any) -> ModelMixin:
        """Build from a recipe's options (``teacher.options``/``student.options``); see the module docstring."""
        return cls(**options)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the weights, then the config (a folder with a config always has its weights)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(folder / WEIGHTS_NAME, self.state_dict(), what=f"the {self.saved_as}'s weights")
        write_json(folder / CONFIG_NAME, {self.saved_as: self.name, "config": self.config, "kdiqa_version": __version__},
                   what=f"the {self.saved_as}'s config")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> ModelMixin:
        """Rebuild a saved model through the registry, load its weights strictly; returned in eval mode.

        The model is first built on the meta device and takes the tensors read from the file as they
        are (``assign=True``), so a 4 GB teacher costs its size once, not a random initialisation plus
        a copy (:func:`kdiqa.io.read_safetensors` reads them into aligned memory: results stay bit for
        bit). A model that cannot be built weightless, or that keeps tensors the file does not hold
        (non-persistent buffers), is built normally and the weights are copied in.
        """
        folder = Path(folder)
        kind = cls.saved_as
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: {kind} folder not found")
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        meta = read_json(config_path)
        if not isinstance(meta, dict) or not isinstance(meta.get(kind), str) or not isinstance(meta.get("config"), dict):
            raise CheckpointError(f"{config_path}: not a kdiqa {kind} config (needs '{kind}' and 'config')")
        name, config = meta[kind], meta["config"]
        builder = cls.registry.get(name)  # an unknown name is a one-line error before anything is read
        sources = builder.weight_options if isinstance(builder, type) and issubclass(builder, ModelMixin) else ()
        arch = {k: v for k, v in config.items() if k not in sources}
        state = read_safetensors(weights_path)
        model = _weightless(cls.registry, name, arch)
        built = model is None
        try:
            model = cls.registry.build(name, **arch) if built else model
        except KdiqaError as exc:
            raise CheckpointError(f"{config_path}: {exc}") from None
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        reshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or reshaped:
            raise CheckpointError(
                f"{weights_path}: weights do not match {CONFIG_NAME} of the {name!r} {kind} ({len(missing)} missing "
                f"e.g. {missing[:2]}, {len(unexpected)} unexpected e.g. {unexpected[:2]}, {len(reshaped)} of another "
                f"shape e.g. {reshaped[:2]})"
            )
        if not built:
            # same dtypes as the module would have (a cast copies only the tensors that differ)
            state = {k: v.to(own[k].dtype) if v.is_floating_point() and v.dtype != own[k].dtype else v for k, v in state.items()}
            model.load_state_dict(state, strict=True, assign=True)
            if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
                model, built = cls.registry.build(name, **arch), True
        if built:
            model.load_state_dict(state, strict=True)
        model.config = dict(config)  # as saved: provenance included
        return model.to(map_location).eval()


def _weightless(registry: Registry, name: str, config: dict[str, Any]) -> nn.Module | None:
    """The model built on the meta device, or None when it cannot be (it then gets a normal build)."""
    try:
        with torch.device("meta"):
            return registry.build(name, **config)
    except Exception:  # e.g. a builder that reads a file into its modules; the normal build reports real errors
        return None
