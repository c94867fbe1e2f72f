"""Weights from the official TANet release and its pretrained parts, mapped onto our parameter names.

The official module names (woshidandan/TANet, ``code/AVA`` and ``code/TAD66K``) are kept apart from
ours because some are misleading (``tygertnet`` is the target net, ``relu7`` a PReLU); this table is
the one place that knows both. Every official parameter has a counterpart, so released checkpoints
(``SRCC_758_LCC_765.pth`` for AVA, ``SRCC_513_LCC_531_MSE_016.pth`` for TAD66K) load strictly:

==============================  ===============================  ======================================
official key prefix             ours                             what it is
==============================  ===============================  ======================================
``res365_last.``                ``theme.backbone.``              ResNet-18, 365 Places classes (frozen)
``hypernet.last_out_w.``        ``theme.hyper_weight.``          Linear(365, 100): target-net weights
``hypernet.last_out_b.``        ``theme.hyper_bias.``            Linear(365, 1): target-net bias
``tygertnet.fc1.``              ``theme.target_fc.``             Linear(365, 100)
``tygertnet.bn1.``              ``theme.target_bn.``             BatchNorm1d(100)
``tygertnet.relu1.``            ``theme.target_act.``            PReLU
``tygertnet.relu7.``            ``theme.out_act.``               PReLU after the generated layer (AVA)
``mobileNet.base_model.0.``     ``aesthetic.``                   MobileNetV2 features (inner names below)
``mobileNet.head.2.``           ``aesthetic_head.fc.``           Linear(1280, 10)
``head_rgb.2.``                 ``rgb_head.fc.``                 Linear(20736, 10)
``head.2.``                     ``fusion_head.fc.``              Linear(30, 10) AVA / Linear(30, 1) TAD66K
==============================  ===============================  ======================================

Inside an official inverted residual the layers are one flat ``conv`` Sequential (conv, BN, ReLU6,
dw conv, BN, ReLU6, conv, BN); torchvision nests the first two triples, hence ``conv.0 → conv.0.0``,
``conv.1 → conv.0.1``, ``conv.3 → conv.1.0``, ``conv.4 → conv.1.1``, ``conv.6 → conv.2``,
``conv.7 → conv.3``. The stem (``0.``) and the last 1×1 conv (``18.``) have the same names in both.
A ``module.`` prefix (DataParallel) is dropped first.

Standalone parts, for building a teacher before TANet training: the Places365 ResNet-18
(``resnet18_places365.pth.tar``, torchvision names under ``state_dict``) and NIMA's ImageNet
MobileNetV2 (``mobilenetv2.pth.tar``: ``features.*`` in the official layout, ``classifier.*`` unused).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from kdiqa.errors import CheckpointError
from kdiqa.io import load_weights

OFFICIAL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("res365_last.", "theme.backbone."),
    ("hypernet.last_out_w.", "theme.hyper_weight."),
    ("hypernet.last_out_b.", "theme.hyper_bias."),
    ("tygertnet.fc1.", "theme.target_fc."),
    ("tygertnet.bn1.", "theme.target_bn."),
    ("tygertnet.relu1.", "theme.target_act."),
    ("tygertnet.relu7.", "theme.out_act."),
    ("mobileNet.base_model.0.", "aesthetic."),
    ("mobileNet.head.2.", "aesthetic_head.fc."),
    ("head_rgb.2.", "rgb_head.fc."),
    ("head.2.", "fusion_head.fc."),
)
RESIDUAL_LAYERS: dict[str, str] = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_RESIDUAL_KEY = re.compile(r"^(\d+)\.conv\.(\d+)\.(.+)$")


def strip_wrapper(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel's ``module.`` prefix."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def mobilenet_key(key: str) -> str:
    """An official MobileNetV2 ``features`` key (without ``features.``) in torchvision's nesting."""
    match = _RESIDUAL_KEY.match(key)
    if match is None:
        return key  # stem and last conv: same names
    block, layer, rest = match.groups()
    if layer not in RESIDUAL_LAYERS:
        raise CheckpointError(f"official MobileNetV2 key {key!r}: no layer {layer} in an inverted residual")
    return f"{block}.conv.{RESIDUAL_LAYERS[layer]}.{rest}"


def official_key(key: str) -> str | None:
    """Our name for an official TANet parameter, or None if the table has no row for it."""
    for theirs, ours in OFFICIAL_PREFIXES:
        if key.startswith(theirs):
            rest = key[len(theirs):]
            return ours + (mobilenet_key(rest) if ours == "aesthetic." else rest)
    return None


def map_official_state(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A released TANet state dict renamed to ours; a key the table does not know is an error."""
    mapped: dict[str, torch.Tensor] = {}
    for key, value in strip_wrapper(state).items():
        ours = official_key(key)
        if ours is None:
            raise CheckpointError(f"{source}: key {key!r} is not a TANet parameter (see teachers/tanet/official.py)")
        mapped[ours] = value
    return mapped


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, hint: str = "") -> None:
    """Strict load with a one-line error naming the first missing, unexpected or mis-shaped key."""
    own = module.state_dict()
    # files older than PyTorch 0.4.1 (the Places365 ResNet) lack BatchNorm's counter; BN fills it in itself
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(
            f"{source}: does not match the model ({len(missing)} missing, {len(unexpected)} unexpected keys; {what}){hint}"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{source}: {key!r} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}{hint}"
            )
    module.load_state_dict(dict(state), strict=True)


def load_official_checkpoint(model: nn.Module, path: str | Path) -> None:
    """A released TANet ``.pth`` (the whole model) into ``model``."""
    hint = " (an AVA checkpoint needs task: ava, a TAD66K one task: tad66k, both preset: official)"
    load_into(model, map_official_state(load_weights(path), str(path)), str(path), hint)


def load_places365_resnet18(backbone: nn.Module, path: str | Path) -> None:
    """``resnet18_places365.pth.tar`` (torchvision names, maybe under ``module.``) into the theme backbone."""
    load_into(backbone, strip_wrapper(load_weights(path)), str(path), " (expects a ResNet-18 with 365 classes)")


def load_nima_mobilenet(features: nn.Module, path: str | Path) -> None:
    """NIMA's ``mobilenetv2.pth.tar`` (official layout) into the aesthetic branch; the classifier is unused."""
    state = strip_wrapper(load_weights(path))
    kept = {mobilenet_key(k[len("features."):]): v for k, v in state.items() if k.startswith("features.")}
    if not kept:
        raise CheckpointError(f"{path}: no 'features.*' keys: not a MobileNetV2 state dict in the NIMA layout")
    load_into(features, kept, str(path), " (expects NIMA's MobileNetV2 layout at width 1.0)")
