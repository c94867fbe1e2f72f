"""The DP-IQA authors' released teacher (``{dataset}_model_plcc_best.pth``) in kdiqa's DPIQATeacher.

``teacher.options.official_weights`` reads the file (see :mod:`kdiqa.released`) and this module maps
its keys onto kdiqa's modules. The map, for a decoder of n levels (n = 4 for SD 1.5):

=====================================  =========================================================
official                               kdiqa
=====================================  =========================================================
``vae.*``, ``unet.*``                  unchanged (the same diffusers classes)
``img_adapter.*``                      ``image_adapter.adapter.*`` (diffusers' FullAdapter inside T2IAdapter)
``gamma``                              ``text_adapter.gamma``
``text_adapter.fc.{0,2}.*``            ``text_adapter.mlp.{0,2}.*``
``QFD.conv{k}.*``, ``QFD.se{k}.*``     ``decoder.levels.{n-k}.0.*``, ``decoder.levels.{n-k}.1.*``
``QFD.fuse_conv.*``, ``QFD.se_fuse.*`` ``decoder.fuse.0.*``, ``decoder.fuse.1.*``
``QFD.conv_score{k}.*``                ``decoder.head.{2(k-1)}.*``
``QFD.fc{k}.*``                        ``decoder.mlp.{2(k-1)}.*``
``QFD.bnc1.*``, ``QFD.classifier_dist.*``  ignored: built by the official code, never used in its forward
=====================================  =========================================================

Why ``n-k``: the official decoder is called ``QFD(up3, up2, up1, up0)``, so its ``conv1`` reads the
*last* up block (320 channels in SD 1.5) and ``conv4`` the first, while kdiqa's ``levels[i]`` reads
``up_blocks[i]``; both concatenate the finest level first. Not in the file: the prompt embeddings
(``quality_embeddings.pth``, given as ``prompt_embeddings``) and the latent scaling (the VAE config's).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from kdiqa.released import TEACHER, map_released, read_released

IGNORED_MODULES = ("QFD.bnc1", "QFD.classifier_dist")
# kdiqa tensors that do not come from the file (the constructor sets them)
NOT_IN_FILE = ("prompt_embeddings", "latent_shift", "latent_scale")


def key_rules(levels: int, head_layers: int, mlp_layers: int = 3) -> list[tuple[str, str]]:
    """(official prefix, kdiqa prefix) pairs; ``gamma`` (no trailing dot) is one whole key."""
    rules = [
        ("vae.", "vae."),
        ("unet.", "unet."),
        ("img_adapter.", "image_adapter.adapter."),
        ("gamma", "text_adapter.gamma"),
        ("text_adapter.fc.", "text_adapter.mlp."),
        ("QFD.fuse_conv.", "decoder.fuse.0."),
        ("QFD.se_fuse.", "decoder.fuse.1."),
    ]
    for k in range(1, levels + 1):
        rules += [(f"QFD.conv{k}.", f"decoder.levels.{levels - k}.0."), (f"QFD.se{k}.", f"decoder.levels.{levels - k}.1.")]
    rules += [(f"QFD.conv_score{k}.", f"decoder.head.{2 * (k - 1)}.") for k in range(1, head_layers + 1)]
    rules += [(f"QFD.fc{k}.", f"decoder.mlp.{2 * (k - 1)}.") for k in range(1, mlp_layers + 1)]
    return rules


def rules_for(teacher: nn.Module) -> list[tuple[str, str]]:
    """The key rules for this teacher's decoder (number of levels, head and MLP layers)."""
    decoder = teacher.decoder
    head_layers = sum(isinstance(m, nn.Conv2d) for m in decoder.head)
    mlp_layers = sum(isinstance(m, nn.Linear) for m in decoder.mlp)
    return key_rules(len(decoder.levels), head_layers, mlp_layers)


def read_official_teacher(path: str | Path) -> dict[str, torch.Tensor]:
    """The released teacher's state dict, memory-mapped (one-line errors for every other kind of file)."""
    return read_released(path, TEACHER)


def load_official_teacher(teacher: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> dict[str, int]:
    """Map ``state`` (official layout) onto ``teacher`` and load it with ``assign=True``.

    ``teacher`` may live on the meta device: only names, shapes and dtypes are read from it, and the
    file's memory-mapped tensors become its parameters, so nothing is copied. Every key is consumed or
    one of :data:`IGNORED_MODULES` (said once on stderr); an unknown, missing or misshapen key is a
    one-line :class:`~kdiqa.errors.CheckpointError` naming it. Returns counts (``loaded``, ``ignored``).
    """
    own = {k: v for k, v in teacher.state_dict().items() if k not in NOT_IN_FILE}
    preset = teacher.config.get("preset")
    mapped, ignored = map_released(state, rules_for(teacher), own, source, f"DP-IQA teacher (preset {preset})", IGNORED_MODULES)
    teacher.load_state_dict(mapped, strict=False, assign=True)
    if ignored:
        print(
            f"kdiqa: note: {source}: ignored {len(ignored)} keys of modules the official forward never uses "
            f"({', '.join(IGNORED_MODULES)})",
            file=sys.stderr,
        )
    return {"loaded": len(mapped), "ignored": len(ignored)}
