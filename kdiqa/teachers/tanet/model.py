"""TANet (He et al., "Rethinking Image Aesthetics Assessment", IJCAI 2022), registered as ``tanet``.

An aesthetics teacher whose score depends on the image's theme. Three branches on the
ImageNet-normalised image, concatenated into a 30-d vector and fused:

- theme: a frozen ResNet-18 with 365 Places classes; its logits feed a hypernetwork
  (``Linear(365, 100)`` weights, ``Linear(365, 1)`` bias) that parameterises one linear layer applied
  to a target net's features (``Linear(365, 100)``–BatchNorm1d–PReLU–Dropout(0.5)); → 10-d;
- RGB-distribution attention: the image average-pooled to 12×12, the 144×144 cosine similarities of
  its pixel colours (20736) → ReLU–Dropout(0.75)–``Linear(20736, 10)``–softmax;
- aesthetics: MobileNetV2 features → ReLU–Dropout(0.75)–``Linear(1280, 10)``;
- fusion: ReLU–Dropout(0.75)–``Linear(30, 10)``+softmax (AVA, a score distribution over 1..10) or
  ``Linear(30, 1)``+sigmoid (TAD66K, the score / 10).

The batch problem. The official theme path applies the generated layer with ``F.linear(q, W, b)`` where
``q`` and ``W`` are both (B, 100): the result is B×B, row i being image i under *every* image's
generated weights, then average-pooled to 10 bins. An image's score thus depends on the other images
in its batch and on their order; the TAD66K code then takes a softmax across the batch, and the AVA
code batch-normalises every column with a BatchNorm1d(B) created anew at each forward (always in
training mode, never learnt), which fails for a batch of one. ``batch_mode: official`` reproduces that
exactly (to evaluate the released checkpoints as published); the default ``per_sample`` is the same
computation with each image as its own batch: image i under its own generated layer, ``q_i·W_i + b_i``,
pooled to 10 bins (i.e. repeated); the two batch-wide normalisers, degenerate for one image, become
their per-image counterparts (a sigmoid for the softmax, nothing for the fresh BatchNorm). The same
parameters serve both modes, so a checkpoint loads in either.

Deviation kept on purpose: the frozen ResNet stays in eval mode (the official code trains with it in
train mode, so its BatchNorm statistics drift although its weights are frozen).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from kdiqa.config.schema import check_choice
from kdiqa.errors import ConfigError
from kdiqa.metrics import dist_mean
from kdiqa.registry import TEACHERS
from kdiqa.teachers.base import Teacher, TeacherOutput
from kdiqa.teachers.tanet.mobilenet import LAST_CHANNELS, official_mobilenet_v2_features
from kdiqa.teachers.tanet.official import load_nima_mobilenet, load_official_checkpoint, load_places365_resnet18

TASKS = ("ava", "tad66k")
BATCH_MODES = ("per_sample", "official")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
THEME_CLASSES = 365  # Places365
HYPER_DIM = 100
BRANCH_DIM = 10  # each branch's output; 3 branches → the 30-d fusion vector
RGB_GRID = 12  # 144 pooled pixels → 144 × 144 = 20736 similarities
NUM_BINS = 10  # AVA scores 1..10

# Architecture presets: "official" is the paper's; "tiny" keeps every head and layer size of the paper
# (365 classes, 100-d target net, 20736 similarities, 1280 → 10, 30 → fusion) and only thins the two
# convolutional backbones, so that CI and the quickstart-sized check run in seconds on a CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "official": {"theme_layers": (2, 2, 2, 2), "theme_channels": (64, 128, 256, 512), "mobilenet_width": 1.0},
    "tiny": {"theme_layers": (1, 1, 1, 1), "theme_channels": (16, 32, 64, 128), "mobilenet_width": 0.25},
}


def _head(in_features: int, out_features: int, dropout: float = 0.75) -> nn.Sequential:
    """The official head shape (ReLU, Dropout, Linear); named layers so the state dict reads ``fc``."""
    return nn.Sequential(
        OrderedDict(act=nn.ReLU(), drop=nn.Dropout(dropout), fc=nn.Linear(in_features, out_features))
    )


def rgb_attention(images: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between the colours of every pair of 12×12-pooled pixels: (B, 20736).

    Describes the image's colour distribution independently of where the colours are.
    """
    pooled = F.adaptive_avg_pool2d(images, RGB_GRID).flatten(2)  # (B, 3, 144)
    pixels = pooled.transpose(1, 2)  # (B, 144, 3)
    dots = pixels @ pooled  # (B, 144, 144)
    norms = pixels.norm(dim=2, keepdim=True) @ pooled.norm(dim=1, keepdim=True)
    return (dots / norms.clamp(min=1e-8)).flatten(1)


def pool_to_bins(scores: torch.Tensor, bins: int = BRANCH_DIM) -> torch.Tensor:
    """(B, N) → (B, bins) by adaptive average pooling along N, as the official ``AdaptiveAvgPool2d((10, 1))``."""
    return F.adaptive_avg_pool1d(scores.unsqueeze(1), bins).squeeze(1)


class ThemeBranch(nn.Module):
    """Places365 ResNet-18 logits → hypernetwork-generated linear layer on a target net → 10-d."""

    def __init__(self, task: str, batch_mode: str, layers: tuple[int, ...], channels: tuple[int, ...]):
        super().__init__()
        self.task = task
        self.batch_mode = batch_mode
        self.backbone = ResNet(
            BasicBlock, list(layers), num_classes=THEME_CLASSES, channels=tuple(channels), stem_width=channels[0]
        )
        self.hyper_weight = nn.Linear(THEME_CLASSES, HYPER_DIM)
        self.hyper_bias = nn.Linear(THEME_CLASSES, 1)
        self.target_fc = nn.Linear(THEME_CLASSES, HYPER_DIM)
        self.target_bn = nn.BatchNorm1d(HYPER_DIM)
        self.target_act = nn.PReLU()
        self.target_drop = nn.Dropout(0.5)
        self.out_act = nn.PReLU()  # the official "relu7": applied by the AVA variant only

    def generated_layer(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, W, b): the target net's features (B, 100) and the generated weights (B, 100) and bias (B, 1)."""
        q = self.target_drop(self.target_act(self.target_bn(self.target_fc(logits))))
        return q, self.hyper_weight(logits), self.hyper_bias(logits)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        q, weight, bias = self.generated_layer(logits)
        if self.batch_mode == "official":
            return pool_to_bins(self._official(q, weight, bias))
        scores = (q * weight).sum(dim=1, keepdim=True) + bias  # (B, 1): each image under its own layer
        scores = self.out_act(scores) if self.task == "ava" else torch.sigmoid(scores)
        return pool_to_bins(scores)

    def _official(self, q: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The released code's B×B mixing (see the module docstring)."""
        mixed = F.linear(q, weight, bias)  # (B, B); the (B, 1) bias broadcasts along rows
        if self.task == "tad66k":
            return torch.softmax(mixed, dim=1)
        if mixed.shape[0] < 2:
            raise ConfigError(
                "tanet batch_mode 'official' with task 'ava' needs at least 2 images per batch (the official "
                "theme path batch-normalises across the batch); use batch_mode: per_sample"
            )
        # a BatchNorm1d(B) made afresh each call: batch statistics, no running stats, weight 1, bias 0
        return self.out_act(F.batch_norm(mixed, None, None, training=True, eps=1e-5))


@TEACHERS.register("tanet")
class TANetTeacher(Teacher):
    """TANet as a kdiqa teacher; score in [0, 1]: (mean − 1) / 9 of the distribution (AVA), the sigmoid (TAD66K).

    Options:
      task               "ava" (10-bin distribution head) or "tad66k" (sigmoid score head)
      batch_mode         "per_sample" (default, batch independent) or "official" (the released batch mixing)
      preset             "official" (ResNet-18 / MobileNetV2 1.0) or "tiny" (thin backbones, same heads)
      freeze_theme       keep the Places365 ResNet frozen, as the paper does
    Weight files (recipe options; ``initialised_from`` records them):
      theme_weights      local resnet18_places365.pth.tar for the theme backbone  (:meth:`from_parts`)
      mobilenet_weights  local NIMA mobilenetv2.pth.tar for the aesthetic branch   (:meth:`from_parts`)
      checkpoint         a released TANet .pth (whole model, official names)       (:meth:`from_official`)

    Features: ``fusion`` (B, 30), ``aesthetic``, ``theme``, ``rgb`` (B, 10 each) and ``aesthetic_map``
    (B, 1280, H/32, W/32), the MobileNetV2 map.
    """

    name = "tanet"
    weight_options = ("theme_weights", "mobilenet_weights", "checkpoint")

    def __init__(
        self,
        task: str = "ava",
        batch_mode: str = "per_sample",
        preset: str = "official",
        freeze_theme: bool = True,
        initialised_from: dict[str, Any] | None = None,
    ):
        for key, value, choices in (("task", task, TASKS), ("batch_mode", batch_mode, BATCH_MODES), ("preset", preset, tuple(PRESETS))):
            check_choice(f"tanet {key}", value, choices)
        super().__init__(freeze_theme=bool(freeze_theme))
        arch = PRESETS[preset]
        self.task = task
        self.freeze_theme = bool(freeze_theme)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.theme = ThemeBranch(task, batch_mode, arch["theme_layers"], arch["theme_channels"])
        self.aesthetic = official_mobilenet_v2_features(arch["mobilenet_width"])
        self.aesthetic_head = _head(LAST_CHANNELS, BRANCH_DIM)
        self.rgb_head = _head(RGB_GRID**4, BRANCH_DIM)
        self.fusion_head = _head(3 * BRANCH_DIM, NUM_BINS if task == "ava" else 1)
        if self.freeze_theme:
            self.theme.backbone.requires_grad_(False)
            self.theme.backbone.eval()

    @classmethod
    def from_options(cls, theme_weights: str | None = None, mobilenet_weights: str | None = None,
                     checkpoint: str | None = None, **arch: Any) -> TANetTeacher:
        if checkpoint:  # every tensor: the parts' files would be overwritten
            return cls.from_official(checkpoint, **arch)
        if theme_weights or mobilenet_weights:
            return cls.from_parts(theme_weights, mobilenet_weights, **arch)
        return cls(**arch)

    @classmethod
    def from_official(cls, path: str, **arch: Any) -> TANetTeacher:
        """A released TANet checkpoint (``SRCC_758_LCC_765.pth`` for AVA, ``SRCC_513_LCC_531_MSE_016.pth`` for TAD66K)."""
        model = cls(**arch, initialised_from={"checkpoint": str(path)})
        load_official_checkpoint(model, path)
        return model

    @classmethod
    def from_parts(cls, theme_weights: str | None = None, mobilenet_weights: str | None = None, **arch: Any) -> TANetTeacher:
        """The pretrained parts TANet training starts from: the Places365 ResNet-18 and NIMA's MobileNetV2."""
        files = {"theme_weights": theme_weights, "mobilenet_weights": mobilenet_weights}
        model = cls(**arch, initialised_from={k: str(v) for k, v in files.items() if v})
        if theme_weights:
            load_places365_resnet18(model.theme.backbone, theme_weights)
        if mobilenet_weights:
            load_nima_mobilenet(model.aesthetic, mobilenet_weights)
        return model

    def train(self, mode: bool = True) -> TANetTeacher:
        super().train(mode)
        if self.freeze_theme:
            self.theme.backbone.eval()  # frozen means its BatchNorm statistics too
        return self

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        x = (images - self.mean) / self.std
        rgb = torch.softmax(self.rgb_head(rgb_attention(x)), dim=1)
        if self.freeze_theme:
            with torch.no_grad():
                theme_logits = self.theme.backbone(x)
        else:
            theme_logits = self.theme.backbone(x)
        theme = self.theme(theme_logits)
        fmap = self.aesthetic(x)
        aesthetic = self.aesthetic_head(F.adaptive_avg_pool2d(fmap, 1).flatten(1))
        fusion = torch.cat([aesthetic, theme, rgb], dim=1)  # the official order
        logits = self.fusion_head(fusion)
        features = {"fusion": fusion, "aesthetic": aesthetic, "theme": theme, "rgb": rgb, "aesthetic_map": fmap}
        if self.task == "ava":
            dist = torch.softmax(logits, dim=1)
            return TeacherOutput(score=(dist_mean(dist) - 1) / (NUM_BINS - 1), dist=dist, features=features)
        return TeacherOutput(score=torch.sigmoid(logits).squeeze(1), features=features)

    @classmethod
    def describe(cls, preset: str = "official", task: str = "ava") -> dict[str, int]:
        """Parameter counts per branch, for ``kdiqa info teacher tanet --preset tiny``, the README and benchmarks."""
        model = cls(task=task, preset=preset)
        parts = {
            "theme_backbone": model.theme.backbone,
            "theme_hyper_target": nn.ModuleList([m for n, m in model.theme.named_children() if n != "backbone"]),
            "aesthetic": nn.ModuleList([model.aesthetic, model.aesthetic_head]),
            "rgb": model.rgb_head,
            "fusion": model.fusion_head,
        }
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        counts["total"] = sum(p.numel() for p in model.parameters())
        return counts


describe = TANetTeacher.describe
