"""DP-IQA's architecture facts, from its JSON options alone: option choices, merged configs, shapes.

Kept apart from the module so that shapes and parameter counts can be known without building it
(``describe``, a cache that plans its datasets, a student that sizes its projectors).
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from kdiqa.errors import ConfigError

INPUT_RANGES = ("[-1,1]", "[0,1]")
LATENT_MODES = ("mean", "sample")
UNET_TRAINABLE = ("full", "frozen", "up_blocks")
# U-Net modules that only produce the noise prediction, which DP-IQA never uses
UNET_OUTPUT_MODULES = ("conv_norm_out", "conv_out")


def merge_options(base: dict[str, Any] | None, override: dict[str, Any] | None, key: str) -> dict[str, Any]:
    """A preset's dict of defaults with the recipe's ``teacher.options.<key>`` merged over it, key by key."""
    if override is not None and not isinstance(override, dict):
        raise ConfigError(f"teacher.options.{key}: expected a mapping, got {type(override).__name__}")
    merged = dict(base or {})
    merged.update(override or {})
    return merged


def public_config(config: Any) -> dict[str, Any]:
    """A diffusers config as a plain JSON-able dict (tuples → lists, private keys dropped)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dict(config).items() if not k.startswith("_")}


def vae_downscale(vae_config: dict[str, Any]) -> int:
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def up_block_shapes(unet_config: dict[str, Any], latent_hw: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(C, H, W) of each up block's output: every down block but the last halves the map, every up
    block but the last doubles it (diffusers' ``add_downsample``/``add_upsample`` rule)."""
    channels = list(unet_config["block_out_channels"])
    n = len(channels)
    h, w = latent_hw
    shapes = []
    for i, c in enumerate(reversed(channels)):
        factor = 2 ** max(n - 2 - i, 0)
        shapes.append((c, h // factor, w // factor))
    return shapes


def feature_shapes_from_config(config: dict[str, Any], image_size: int | tuple[int, int]) -> dict[str, tuple[int, ...]]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    d = vae_downscale(config["vae"])
    ups = up_block_shapes(config["unet"], (h // d, w // d))
    decoder = config["decoder"]
    map_size = int(decoder["map_size"])
    shapes: dict[str, tuple[int, ...]] = {"quality_map": (int(decoder["head_channels"][-1]), map_size, map_size)}
    shapes.update({f"unet.up_blocks.{i}": s for i, s in enumerate(ups)})
    return shapes


def check_unet_for_adapter(unet_cfg: dict[str, Any]) -> None:
    """The T2I residual of a block without cross-attention is added *after* its downsampler, so only a
    last down block may lack cross-attention (as in SD); anything else would mismatch shapes."""
    types = list(unet_cfg["down_block_types"])
    if any("CrossAttn" not in t for t in types[:-1]):
        raise ConfigError(
            f"teacher.options.unet.down_block_types: {types}: every down block but the last needs cross-attention"
        )


def plain_stats(stats: Any) -> Any:
    """``latent_stats`` as JSON: None or [mean, std] (numbers or per-channel lists)."""
    if stats is None:
        return None
    if not isinstance(stats, (list, tuple)) or len(stats) != 2:
        raise ConfigError(f"teacher.options.latent_stats: need [mean, std], got {stats!r}")
    return [s.tolist() if isinstance(s, torch.Tensor) else copy.deepcopy(s) for s in stats]


def latent_affine(stats: Any, channels: int, vae_cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """latent → (latent - shift) · scale: SD's scaling factor, or standardisation by dataset stats."""
    if stats is None:
        shift = float(vae_cfg.get("shift_factor") or 0.0)
        scale = float(vae_cfg.get("scaling_factor") or 0.18215)
        return torch.full((channels,), shift), torch.full((channels,), scale)
    mean, std = (torch.as_tensor(s, dtype=torch.float32).flatten() for s in stats)
    if mean.numel() not in (1, channels) or std.numel() not in (1, channels) or bool((std <= 0).any()):
        raise ConfigError(
            f"teacher.options.latent_stats: need [mean, std], each a number or {channels} numbers with std > 0"
        )
    return mean.expand(channels).clone(), (1.0 / std).expand(channels).clone()
