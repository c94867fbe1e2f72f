"""DP-IQA's two adapters: quality prompts for the U-Net's cross-attention, and a T2I-Adapter on pixels.

The text side is computed once: the prompt set is encoded by a CLIP text encoder when the teacher is
first built and kept as a buffer, so neither training nor caching ever loads the text encoder again.
Only the small residual MLP on top of those embeddings is trained.

The word lists below are the official ones (RomGai/DP-IQA, ``gene_text_embedding.py``): 5 qualities ×
9 scenes × 33 distortions = 1485 prompts, ordered quality-major as ``itertools.product`` yields them.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from kdiqa.errors import CheckpointError, first_line
from kdiqa.io import read_json, save_weights

PROMPT_TEMPLATE = "a photo of a {scene} with {distortion} artifacts, which is of {quality} quality"
QUALITIES: tuple[str, ...] = ("bad", "poor", "fair", "good", "perfect")
SCENES: tuple[str, ...] = (
    "animal", "cityscape", "human", "indoor", "landscape", "night", "plant", "still_life", "others",
)
DISTORTIONS: tuple[str, ...] = (
    "jpeg2000 compression", "jpeg compression", "white noise", "gaussian blur", "fastfading", "fnoise",
    "contrast", "lens", "motion", "diffusion", "shifting", "color quantization", "oversaturation",
    "desaturation", "white with color", "impulse", "multiplicative", "white noise with denoise", "brighten",
    "darken", "shifting the mean", "jitter", "noneccentricity patch", "pixelate", "quantization",
    "color blocking", "sharpness", "realistic blur", "realistic noise", "underexposure", "overexposure",
    "realistic contrast change", "other realistic",
)

# the key a prompt-embedding .safetensors file stores its (N, D) tensor under
EMBEDDINGS_KEY = "prompt_embeddings"


def build_prompts(
    qualities: Sequence[str] = QUALITIES,
    scenes: Sequence[str] = SCENES,
    distortions: Sequence[str] = DISTORTIONS,
    template: str = PROMPT_TEMPLATE,
) -> list[str]:
    """The prompt set in the official order (quality, then scene, then distortion)."""
    return [
        template.format(quality=q, scene=s, distortion=d)
        for q, s, d in itertools.product(qualities, scenes, distortions)
    ]


class TextAdapter(nn.Module):
    """``t + γ·MLP(t)``: γ starts at 1e-4 so training starts from the frozen CLIP embeddings."""

    def __init__(self, dim: int, hidden: int | None = None, gamma_init: float = 1e-4):
        super().__init__()
        hidden = hidden or dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.gamma = nn.Parameter(torch.full((dim,), float(gamma_init)))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings + self.gamma * self.mlp(embeddings)


# What the image adapter sees: the image (official), or the image beside its local contrast normalisation
IMAGE_ADAPTER_INPUTS: dict[str, int] = {"rgb": 3, "rgb+lcn": 6}
# LCN's stabiliser in [0, 1] units (~2.5 grey levels of 255): keeps flat areas from amplifying quantisation noise
LCN_EPS = 0.01


def local_contrast_normalise(images: torch.Tensor, window: int = 7, eps: float = LCN_EPS) -> torch.Tensor:
    """``(x - local mean) / (local std + eps)`` per channel over a ``window``² box (CNNIQA's input).

    Why: blur, noise and compression change local structure far more than global level, and a small
    network learning from scratch finds them much faster in this normalised form. It hides contrast and
    brightness changes, so the adapter gets it *beside* the raw image, never instead of it.
    ``images`` are in [0, 1]; the result is independent of the input range convention.
    """
    pad = window // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    mean = F.avg_pool2d(padded, window, stride=1)
    mean_sq = F.avg_pool2d(padded * padded, window, stride=1)
    std = (mean_sq - mean * mean).clamp_min(0).sqrt()
    return (images - mean) / (std + eps)


def image_adapter_input(images: torch.Tensor, model_input: torch.Tensor, kind: str) -> torch.Tensor:
    """The adapter's input: ``model_input`` (the tensor the VAE sees) and, for ``rgb+lcn``, the LCN of
    ``images`` (the same views in [0, 1]) concatenated along channels."""
    if kind == "rgb":
        return model_input
    return torch.cat([model_input, local_contrast_normalise(images)], dim=1)


def build_image_adapter(
    channels: Sequence[int],
    downscale_factor: int,
    num_res_blocks: int = 2,
    adapter_type: str = "full_adapter",
    input_kind: str = "rgb",
) -> nn.Module:
    """A diffusers T2I-Adapter whose residuals match the U-Net's down blocks.

    ``channels`` must equal the U-Net's ``block_out_channels`` and ``downscale_factor`` the VAE's spatial
    reduction, so that residual i has the shape of down block i's hidden states; ``input_kind`` (a key
    of :data:`IMAGE_ADAPTER_INPUTS`) sets its input channels.
    """
    from diffusers import T2IAdapter  # deferred: importing diffusers takes seconds

    return T2IAdapter(
        in_channels=IMAGE_ADAPTER_INPUTS[input_kind],
        channels=list(channels),
        num_res_blocks=num_res_blocks,
        downscale_factor=downscale_factor,
        adapter_type=adapter_type,
    )


def random_prompt_embeddings(num_prompts: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Stand-in embeddings for presets without a text encoder; unit-norm rows like CLIP's features."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    emb = torch.randn(num_prompts, dim, generator=generator, device="cpu")
    return emb / emb.norm(dim=-1, keepdim=True)


def read_prompt_embeddings(path: str | Path) -> torch.Tensor:
    """Read an (N, D) embedding tensor from ``.safetensors`` (key ``prompt_embeddings`` or the only key)
    or from a ``.pt``/``.pth`` tensor such as the official ``quality_embeddings.pth`` (loaded safely)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: prompt embedding file not found (set teacher.options.prompt_embeddings)")
    try:
        if path.suffix == ".safetensors":
            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many different types
        raise CheckpointError(f"{path}: cannot read prompt embeddings ({type(exc).__name__})") from None
    if isinstance(obj, dict):
        if EMBEDDINGS_KEY in obj:
            obj = obj[EMBEDDINGS_KEY]
        elif len(obj) == 1:
            obj = next(iter(obj.values()))
        else:
            raise CheckpointError(f"{path}: expected one tensor or the key {EMBEDDINGS_KEY!r}, found keys {sorted(obj)[:5]}")
    if not isinstance(obj, torch.Tensor) or obj.ndim != 2:
        shape = tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise CheckpointError(f"{path}: prompt embeddings must be a 2-D (prompts, dim) tensor, found {shape}")
    return obj.float()


def save_prompt_embeddings(path: str | Path, embeddings: torch.Tensor, prompts: Sequence[str] | None = None) -> None:
    """Save embeddings (with the prompts as metadata) so a later build needs no text encoder."""
    metadata = {"num_prompts": str(embeddings.shape[0])}
    if prompts is not None:
        metadata["prompts"] = "\n".join(prompts)
    save_weights(path, {EMBEDDINGS_KEY: embeddings.float()}, metadata=metadata)


def prompt_embeddings_from(
    prompts: Sequence[str], dim: int, text_encoder: str | Path | None, embeddings_file: str | None, checkpoint: str | None = None
) -> tuple[torch.Tensor | None, str]:
    """(embeddings, where they came from): a file's (first) or a text encoder's, checked against (prompts, dim);
    None for ``"random"`` or neither (the seeded random ones stay). ``checkpoint``: an SD checkpoint without a
    text encoder, where neither is an error."""
    n = len(prompts)
    if embeddings_file == "random":
        return None, "random"
    if embeddings_file is not None:
        emb, source, where = read_prompt_embeddings(embeddings_file), f"file:{embeddings_file}", embeddings_file
    elif text_encoder is not None:
        emb, source, where = encode_prompts(prompts, text_encoder), f"text_encoder:{text_encoder}", str(text_encoder)
    elif checkpoint is not None:
        raise CheckpointError(
            f"{checkpoint}: no text_encoder/ + tokenizer/ to encode the quality prompts; set "
            "teacher.options.text_encoder (a CLIP folder), teacher.options.prompt_embeddings (a file), "
            "or prompt_embeddings: random"
        )
    else:
        return None, "random"
    if tuple(emb.shape) != (n, dim):
        raise CheckpointError(
            f"{where}: prompt embeddings have shape {tuple(emb.shape)}, the teacher needs ({n}, {dim}) "
            f"({n} prompts × the U-Net's cross-attention width)"
        )
    return emb.float().contiguous(), source


def resolve_text_encoder(path: str | Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) for an SD folder (``text_encoder/`` + ``tokenizer/``) or a CLIP folder."""
    path = Path(path).expanduser()
    if (path / "text_encoder" / "config.json").is_file():
        return path / "text_encoder", path / "tokenizer"
    if (path / "config.json").is_file():
        has_tokenizer = any((path / name).is_file() for name in ("tokenizer.json", "vocab.json"))
        return path, (path if has_tokenizer else path.parent / "tokenizer")
    raise CheckpointError(
        f"{path}: no CLIP text encoder here (expected text_encoder/config.json or config.json); "
        "set teacher.options.text_encoder to a CLIP text model folder or give prompt_embeddings"
    )


@torch.no_grad()
def encode_prompts(prompts: Sequence[str], text_encoder: str | Path, batch_size: int = 64) -> torch.Tensor:
    """Encode prompts into one vector each, the way the official code does it where the weights allow.

    A full ``CLIPModel`` folder gives ``get_text_features`` (projected; exactly the official
    embeddings with openai/clip-vit-large-patch14); ``CLIPTextModelWithProjection`` gives ``text_embeds``;
    a plain ``CLIPTextModel`` (what SD checkpoints ship in ``text_encoder/``) gives the pooled EOS state.
    """
    # deferred: importing transformers takes seconds, and only this path needs it
    from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    model_dir, tokenizer_dir = resolve_text_encoder(text_encoder)
    archs = read_json(model_dir / "config.json").get("architectures") or []
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        if "CLIPModel" in archs:
            model: nn.Module = CLIPModel.from_pretrained(str(model_dir), local_files_only=True)
        elif "CLIPTextModelWithProjection" in archs:
            model = CLIPTextModelWithProjection.from_pretrained(str(model_dir), local_files_only=True)
        else:
            model = CLIPTextModel.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{model_dir}: cannot load the CLIP text encoder/tokenizer ({first_line(exc, with_type=False)})") from None
    model.eval()
    text_config = model.config.text_config if "CLIPModel" in archs else model.config
    max_length = min(int(tokenizer.model_max_length), int(text_config.max_position_embeddings))
    chunks = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            list(prompts[start : start + batch_size]),
            padding=True, truncation=True, max_length=max_length, return_tensors="pt",
        )
        if "CLIPModel" in archs:
            out = model.get_text_features(**batch)
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
        elif "CLIPTextModelWithProjection" in archs:
            out = model(**batch).text_embeds
        else:
            out = model(**batch).pooler_output
        chunks.append(out.float())
    return torch.cat(chunks)
