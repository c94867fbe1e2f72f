"""Building DP-IQA's Stable Diffusion parts from local checkpoints, never from the hub.

Two layouts are accepted, through one function (:func:`load_stable_diffusion`):

* a diffusers folder (``unet/``, ``vae/``, optional ``text_encoder/`` + ``tokenizer/``), loaded with
  ``from_pretrained(..., local_files_only=True)``;
* one original-layout file (``.safetensors`` or ``.ckpt``), loaded with ``from_single_file`` and the
  packaged SD 1.5 / 2.x configs passed as ``config=``: without it diffusers looks the config up on the
  hub. The family is read from the checkpoint (the U-Net's cross-attention width: 768 or 1024).

``HF_HUB_OFFLINE`` is set for the duration of every load, and every call passes ``local_files_only``.
A relative path that does not exist from the working directory is looked up from the folder that
holds the ``teachers`` package, so weights shipped inside it (``teachers/dpiqa/weights/tiny-mini``, the
tiny recipes' prior) load wherever kdiqa runs from, like the recipes under ``recipes/``.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdiqa.config.loader import resolve_packaged_path
from kdiqa.errors import CheckpointError, first_line
from kdiqa.io import load_weights
from kdiqa.teachers.dpiqa.presets import SD_DOWNLOAD_HINT, packaged_config_dir

SD_CHECKPOINT_KEY = "teacher.options.sd_checkpoint"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
# the first cross-attention key projection of the original (LDM) U-Net layout; its width tells 1.x from 2.x
LDM_CROSS_ATTN_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
FAMILY_BY_CONTEXT_DIM = {768: "sd15", 1024: "sd21"}


@dataclass
class SDComponents:
    """What a checkpoint gave: the U-Net and VAE modules, and where its text encoder is (if anywhere)."""

    unet: nn.Module
    vae: nn.Module
    family: str  # "sd15", "sd21" or "custom"
    text_encoder: Path | None  # a folder :func:`teachers.dpiqa.adapters.encode_prompts` accepts
    source: str


def missing_checkpoint_error(path: str | Path, family: str = "sd15") -> CheckpointError:
    return CheckpointError(
        f"{path}: Stable Diffusion checkpoint not found; download {SD_DOWNLOAD_HINT.get(family, SD_DOWNLOAD_HINT['sd15'])} "
        f"or a single .safetensors file, and set {SD_CHECKPOINT_KEY} to its path"
    )


@contextmanager
def hub_offline() -> Iterator[None]:
    """Set HF_HUB_OFFLINE=1 while loading, restoring the previous value afterwards."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def load_stable_diffusion(path: str | Path, config_dir: str | Path | None = None, family: str = "sd15") -> SDComponents:
    """Load U-Net + VAE (float32, on CPU) from a diffusers folder or one original-layout file.

    ``config_dir`` (single files only) overrides the packaged config: a diffusers-layout folder with
    ``unet/config.json`` and ``vae/config.json``, for checkpoints of another architecture. ``family``
    only chooses what the missing-path message asks the user to download.
    """
    given, path = str(path), resolve_packaged_path(path)
    if not path.exists():
        raise missing_checkpoint_error(path, family)
    with hub_offline():
        # the record keeps the path as given: a packaged "teachers/dpiqa/weights/..." stays machine-independent
        if path.is_dir():
            return dataclasses.replace(_load_diffusers_folder(path), source=given)
        if path.suffix in SINGLE_FILE_SUFFIXES:
            parts = _load_single_file(path, None if config_dir is None else Path(config_dir).expanduser())
            return dataclasses.replace(parts, source=given)
    raise CheckpointError(
        f"{path}: not a Stable Diffusion checkpoint (expected a diffusers folder with unet/ and vae/, "
        f"or a {'/'.join(SINGLE_FILE_SUFFIXES)} file); set {SD_CHECKPOINT_KEY}"
    )


def _weights_variant(folder: Path) -> str | None:
    """``fp16`` when a component folder only holds the fp16 variant (some downloads are fp16-only)."""
    names = {p.name for p in folder.iterdir()}
    plain = any(n.startswith("diffusion_pytorch_model.") and n.count(".") == 1 for n in names)
    if not plain and any(n.startswith("diffusion_pytorch_model.fp16.") for n in names):
        return "fp16"
    return None


def family_of_unet_config(config: Any) -> str:
    return FAMILY_BY_CONTEXT_DIM.get(int(config.get("cross_attention_dim", 0) or 0), "custom")


def _load_diffusers_folder(path: Path) -> SDComponents:
    from diffusers import AutoencoderKL, UNet2DConditionModel  # deferred: importing diffusers takes seconds

    for part in ("unet", "vae"):
        if not (path / part / "config.json").is_file():
            raise CheckpointError(
                f"{path}: no {part}/config.json; a diffusers Stable Diffusion folder needs unet/ and vae/ "
                f"({SD_DOWNLOAD_HINT['sd15']}); set {SD_CHECKPOINT_KEY}"
            )
    try:
        unet = UNet2DConditionModel.from_pretrained(
            str(path), subfolder="unet", local_files_only=True, torch_dtype=torch.float32,
            variant=_weights_variant(path / "unet"),
        )
        vae = AutoencoderKL.from_pretrained(
            str(path), subfolder="vae", local_files_only=True, torch_dtype=torch.float32,
            variant=_weights_variant(path / "vae"),
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot load the U-Net/VAE ({first_line(exc)})") from None
    has_text = (path / "text_encoder" / "config.json").is_file() and (path / "tokenizer").is_dir()
    return SDComponents(
        unet=unet.float(), vae=vae.float(), family=family_of_unet_config(unet.config),
        text_encoder=path if has_text else None, source=str(path),
    )


def detect_family(state: dict[str, torch.Tensor], source: str | Path = "checkpoint") -> str:
    """``sd15`` or ``sd21`` from the width of the U-Net's cross-attention (768 vs 1024)."""
    weight = state.get(LDM_CROSS_ATTN_KEY)
    if weight is None:
        raise CheckpointError(
            f"{source}: not an original-layout Stable Diffusion 1.x/2.x file (no key {LDM_CROSS_ATTN_KEY}); "
            "convert it to a diffusers folder or give teacher.options.sd_config"
        )
    family = FAMILY_BY_CONTEXT_DIM.get(int(weight.shape[1]))
    if family is None:
        raise CheckpointError(
            f"{source}: U-Net cross-attention width {weight.shape[1]} is neither SD 1.x (768) nor SD 2.x (1024); "
            "give teacher.options.sd_config (a diffusers folder with unet/ and vae/ configs)"
        )
    return family


def _load_single_file(path: Path, config_dir: Path | None) -> SDComponents:
    from diffusers import AutoencoderKL, UNet2DConditionModel  # deferred: importing diffusers takes seconds

    state = load_weights(path)  # never executes pickled code
    if config_dir is None:
        family = detect_family(state, path)
        config_dir = packaged_config_dir(family)
    else:
        for part in ("unet", "vae"):
            if not (config_dir / part / "config.json").is_file():
                raise CheckpointError(f"{config_dir}: sd_config needs {part}/config.json (a diffusers-layout folder)")
        weight = state.get(LDM_CROSS_ATTN_KEY)
        family = FAMILY_BY_CONTEXT_DIM.get(int(weight.shape[1]), "custom") if weight is not None else "custom"
    try:
        unet = UNet2DConditionModel.from_single_file(
            state, config=str(config_dir), subfolder="unet", local_files_only=True, torch_dtype=torch.float32
        )
        vae = AutoencoderKL.from_single_file(
            state, config=str(config_dir), subfolder="vae", local_files_only=True, torch_dtype=torch.float32
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: cannot convert the single-file checkpoint ({first_line(exc)})") from None
    return SDComponents(unet=unet.float(), vae=vae.float(), family=family, text_encoder=None, source=str(path))
