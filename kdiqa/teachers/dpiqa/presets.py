"""Architecture presets of the DP-IQA teacher: ``tiny`` (tests, quickstart), ``sd15`` (official), ``sd21``.

A preset is a plain JSON-like dict of defaults; any constructor option overrides it, and the U-Net and
VAE dicts are diffusers configs (merged key by key). The SD presets read the packaged configs in
``configs/<family>/{unet,vae}/config.json`` (architecture facts of the released checkpoints), which
are also what ``from_single_file`` is pointed at so that loading never asks the hub.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from kdiqa.errors import ConfigError
from kdiqa.teachers.dpiqa.adapters import DISTORTIONS, PROMPT_TEMPLATE, QUALITIES, SCENES

CONFIG_ROOT = Path(__file__).with_name("configs")
SD_FAMILIES = ("sd15", "sd21")
SD_DOWNLOAD_HINT = {
    "sd15": "Stable Diffusion v1.5 in diffusers format (runwayml/stable-diffusion-v1-5: unet/, vae/, text_encoder/, tokenizer/)",
    "sd21": "Stable Diffusion 2.1 in diffusers format (stabilityai/stable-diffusion-2-1-base: unet/, vae/, text_encoder/, tokenizer/)",
}


def packaged_config_dir(family: str) -> Path:
    """The diffusers-layout folder (``unet/config.json``, ``vae/config.json``) of an SD family."""
    if family not in SD_FAMILIES:
        raise ConfigError(f"unknown Stable Diffusion family {family!r} (known: {', '.join(SD_FAMILIES)})")
    return CONFIG_ROOT / family


def packaged_config(family: str, part: str) -> dict[str, Any]:
    """A released diffusers config without its private (``_``-prefixed) keys."""
    data = json.loads((packaged_config_dir(family) / part / "config.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _official_head() -> dict[str, Any]:
    return {
        "image_adapter": {"enabled": True, "adapter_type": "full_adapter", "num_res_blocks": 2, "trainable": True},
        "text_adapter": {"hidden": None, "gamma_init": 1e-4},
        "decoder": {"width": 512, "head_channels": [128, 32, 8], "mlp_hidden": 512, "map_size": 64, "se_reduction": 16},
        "prompt_template": PROMPT_TEMPLATE,
        "qualities": list(QUALITIES),
        "scenes": list(SCENES),
        "distortions": list(DISTORTIONS),
        "image_size": 512,
    }


def _tiny() -> dict[str, Any]:
    """Same family, CPU-sized: 64 px in, VAE ×4 → 16² latents, a two-level U-Net, 30 prompts, 8×16² map."""
    return {
        "unet": {
            "sample_size": 16,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": 32,
            # diffusers reads this as the number of heads: 2 heads of 16-32 channels (8 heads of 4 is 10× slower on CPU)
            "attention_head_dim": 2,
            "norm_num_groups": 8,
        },
        "vae": {
            "sample_size": 64,
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 4,
            "block_out_channels": [16, 32, 32],
            "layers_per_block": 1,
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "norm_num_groups": 8,
        },
        # the image adapter carries what a random frozen VAE throws away: on and trainable
        "image_adapter": {"enabled": True, "adapter_type": "full_adapter", "num_res_blocks": 1, "trainable": True},
        "text_adapter": {"hidden": None, "gamma_init": 1e-4},
        "decoder": {"width": 32, "head_channels": [16, 8], "mlp_hidden": 64, "map_size": 16, "se_reduction": 8},
        "prompt_template": PROMPT_TEMPLATE,
        "qualities": list(QUALITIES),
        "scenes": ["landscape", "others"],
        "distortions": ["gaussian blur", "white noise", "jpeg compression"],
        "image_size": 64,
    }


def _sd(family: str) -> dict[str, Any]:
    preset = _official_head()
    preset["unet"] = packaged_config(family, "unet")
    preset["vae"] = packaged_config(family, "vae")
    return preset


PRESET_NAMES = ("tiny", "sd15", "sd21")


def get_preset(name: str) -> dict[str, Any]:
    """A fresh copy of a preset's defaults."""
    if name == "tiny":
        return _tiny()
    if name in SD_FAMILIES:
        return copy.deepcopy(_sd(name))
    raise ConfigError(f"teacher.options.preset: unknown DP-IQA preset {name!r} (known: {', '.join(PRESET_NAMES)})")
