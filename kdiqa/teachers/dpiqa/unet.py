"""Stable Diffusion's U-Net read as a feature extractor: every up block's output, and seeded noise."""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn


def seeded_noise(like: torch.Tensor, seed: int | None, stream: int) -> torch.Tensor:
    """Seeded noise is one (1, C, h, w) draw shared by the batch, so a view's result never depends on
    its batch or position; ``seed: None`` draws fresh per-sample noise (the official behaviour).
    ``stream`` keeps two uses of one seed (latent sampling, U-Net noise) apart."""
    if seed is None:
        return torch.randn_like(like)
    generator = torch.Generator(device="cpu").manual_seed(int(seed) * 2 + stream)
    noise = torch.randn((1, *like.shape[1:]), generator=generator, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype).expand_as(like)


def up_block_outputs(
    unet: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, tokens: torch.Tensor,
    residuals: list[torch.Tensor] | None,
) -> list[torch.Tensor]:
    """Run the U-Net and collect every up block's output with temporary forward hooks.

    ``residuals``: the image adapter's, one per down block; the U-Net pops them off the list, so it
    must be a fresh list on every call.
    """
    captured: list[torch.Tensor | None] = [None] * len(unet.up_blocks)

    def store(index: int, _module: nn.Module, _inputs: Any, output: Any) -> None:
        captured[index] = output[0] if isinstance(output, tuple) else output

    handles = [block.register_forward_hook(partial(store, i)) for i, block in enumerate(unet.up_blocks)]
    try:
        unet(latents, timesteps, encoder_hidden_states=tokens, down_intrablock_additional_residuals=residuals, return_dict=False)
    finally:
        for handle in handles:
            handle.remove()
    if any(c is None for c in captured):
        raise RuntimeError("dpiqa: an up block of the U-Net did not run; the forward hooks caught nothing")
    return captured  # type: ignore[return-value]
