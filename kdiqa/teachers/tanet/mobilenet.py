"""TANet's aesthetic branch: MobileNetV2 in the layout of the NIMA-pytorch code TANet builds on.

TANet's released checkpoints were trained with that MobileNetV2, which differs from torchvision's in
three places that change the numbers a checkpoint produces:

- the first inverted residual (expansion 1) still has its 1×1 expansion conv (32 → 32 channels);
  torchvision drops it;
- the stem conv and the last 1×1 conv (→ 1280) use ReLU, not ReLU6.

So the branch is torchvision's ``mobilenet_v2`` (built with ``weights=None``) changed in exactly
those places; the parameter names stay torchvision's, and :mod:`teachers.tanet.official` maps the
released names onto them.
"""
from __future__ import annotations

from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.ops.misc import Conv2dNormActivation

LAST_CHANNELS = 1280  # torchvision keeps 1280 for width multipliers <= 1, as the official code does


def official_mobilenet_v2_features(width_mult: float = 1.0) -> nn.Sequential:
    """The convolutional part (``features``) of TANet's MobileNetV2; output (B, 1280, H/32, W/32)."""
    features = mobilenet_v2(weights=None, width_mult=width_mult).features
    features[0][2] = nn.ReLU(inplace=True)
    features[-1][2] = nn.ReLU(inplace=True)
    first = features[1]
    channels = first.conv[0][0].in_channels
    expand = Conv2dNormActivation(channels, channels, kernel_size=1, activation_layer=nn.ReLU6)
    first.conv = nn.Sequential(expand, *first.conv)
    return features
