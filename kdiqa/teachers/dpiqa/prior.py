"""A diffusion prior for the tiny teacher: pretrain its VAE and U-Net as a generative model, no labels.

Why: DP-IQA works because its U-Net was pretrained as a denoiser on natural images; its features
already separate structure from degradation, and the quality head only reads them out. A tiny teacher
with random weights has no such prior: a linear probe of its up-block features on the mini dataset
finds validation SRCC 0.06, against 0.42 for the image adapter whose residuals are mixed into them
(``benchmarks/feature_probe.py``). Pretraining the same tiny architecture the way Stable Diffusion
was trained, on the training split's crops only, gives it a prior in minutes on a CPU:

1. VAE: an autoencoder (L1 + MSE reconstruction, KL weight 1e-6), so its latents keep what the image
   holds, distortions included, instead of a random projection of it.
2. U-Net: ε-prediction on the standardised latents (DDPM, SD's scaled-linear β schedule, 1000 steps),
   half of the timesteps drawn below 100 because DP-IQA reads the U-Net at t = 1, cross-attending to
   the tiny teacher's own (seeded random) prompt tokens.

Labels and the validation and test photographs are never used. The result is written as a diffusers
folder (``unet/``, ``vae/``: config.json + safetensors), the format of a real SD checkpoint, and the
tiny recipes load it through ``teacher.options.sd_checkpoint`` — the same code path. ``prior.json``
records how it was made. The packaged prior was made with:

    .venv/bin/python -m kdiqa.teachers.dpiqa.prior --out kdiqa/teachers/dpiqa/weights/tiny-mini
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdiqa.config import load_recipe
from kdiqa.data.datamodule import IQADataModule
from kdiqa.errors import ConfigError
from kdiqa.io import atomic_folder
from kdiqa.teachers.dpiqa.model import DPIQATeacher

LOW_TIMESTEP_FRACTION = 0.5  # share of U-Net steps drawn from t < LOW_TIMESTEP_MAX
LOW_TIMESTEP_MAX = 100
KL_WEIGHT = 1e-6


def pretrain_prior(
    images: torch.Tensor,
    *,
    vae_steps: int = 600,
    unet_steps: int = 600,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any]]:
    """Pretrain a fresh tiny VAE and U-Net on ``images`` (N, 3, H, W) in [0, 1]; returns (vae, unet, log)."""
    from diffusers import DDPMScheduler  # deferred: importing diffusers takes seconds

    if images.dim() != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ConfigError(f"prior: need images of shape (N, 3, H, W), got {tuple(images.shape)}")
    torch.manual_seed(seed)
    teacher = DPIQATeacher(preset="tiny", seed=seed)
    vae, unet = teacher.vae, teacher.unet
    generator = torch.Generator().manual_seed(seed)

    def batch() -> torch.Tensor:
        x = images[torch.randint(len(images), (batch_size,), generator=generator)] * 2 - 1
        flip = torch.rand(len(x), generator=generator) < 0.5
        x[flip] = x[flip].flip(-1)
        return x

    log: dict[str, Any] = {}
    vae.train().requires_grad_(True)
    optimiser = torch.optim.Adam(vae.parameters(), lr)
    losses = []
    for _ in tqdm(range(vae_steps), desc="prior: VAE", disable=not progress):
        x = batch()
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        loss = F.l1_loss(reconstruction, x) + F.mse_loss(reconstruction, x) + KL_WEIGHT * posterior.kl().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    vae.eval().requires_grad_(False)
    log["vae_loss_first_last"] = [losses[0], losses[-1]] if losses else None

    with torch.no_grad():
        sample = images[: min(len(images), 512)] * 2 - 1
        latents = torch.cat([vae.encode(sample[i : i + 128]).latent_dist.mean for i in range(0, len(sample), 128)])
    mean, std = latents.mean((0, 2, 3)), latents.std((0, 2, 3)).clamp_min(1e-6)
    log["latent_mean"], log["latent_std"] = mean.tolist(), std.tolist()

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    with torch.no_grad():
        tokens = teacher.text_adapter(teacher.prompt_embeddings)
    unet.train().requires_grad_(True)
    optimiser = torch.optim.AdamW(unet.parameters(), lr, weight_decay=1e-4)
    losses = []
    for _ in tqdm(range(unet_steps), desc="prior: U-Net", disable=not progress):
        with torch.no_grad():
            z = (vae.encode(batch()).latent_dist.mean - mean[:, None, None]) / std[:, None, None]
        low = torch.rand(len(z), generator=generator) < LOW_TIMESTEP_FRACTION
        timesteps = torch.where(
            low,
            torch.randint(0, LOW_TIMESTEP_MAX, (len(z),), generator=generator),
            torch.randint(0, scheduler.config.num_train_timesteps, (len(z),), generator=generator),
        )
        noise = torch.randn(z.shape, generator=generator)
        pred = unet(scheduler.add_noise(z, noise, timesteps), timesteps, encoder_hidden_states=tokens.unsqueeze(0).expand(len(z), -1, -1)).sample
        loss = F.mse_loss(pred, noise)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    unet.eval().requires_grad_(False)
    log["unet_loss_first_last"] = [losses[0], losses[-1]] if losses else None
    return vae, unet, log


def save_prior(vae: torch.nn.Module, unet: torch.nn.Module, out: str | Path, provenance: dict[str, Any]) -> Path:
    """Write a diffusers folder (``unet/``, ``vae/``, ``prior.json``) atomically, replacing ``out``."""
    with atomic_folder(out, force=True) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        (tmp / "prior.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return Path(out)


def training_images(recipe_name: str, overrides: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Every training view of the recipe's dataset (evaluation views: no augmentation), in [0, 1]."""
    recipe = load_recipe(recipe_name, overrides)
    dm = IQADataModule(recipe.data, recipe.views)
    loader = DataLoader(dm.split_dataset("train", train_views=False), batch_size=256, num_workers=0)
    images = torch.cat([batch["image"] for batch in loader])
    data = {"name": recipe.data.name, "root": recipe.data.root, "options": dict(recipe.data.options), "split": "train"}
    return images, {"recipe": recipe_name, "overrides": overrides, "data": data, "views": len(images), "size": list(images.shape[-2:])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the diffusers folder to write")
    parser.add_argument("--recipe", default="dpiqa/tiny", help="whose data section gives the training images")
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--unet-steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. data.options.n_train=6000")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    images, source = training_images(args.recipe, args.overrides)
    started = time.perf_counter()
    vae, unet, log = pretrain_prior(
        images, vae_steps=args.vae_steps, unet_steps=args.unet_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    seconds = time.perf_counter() - started
    provenance = {
        "what": "tiny DP-IQA diffusion prior: VAE autoencoder + U-Net denoiser, no labels, training split only",
        "command": "python -m kdiqa.teachers.dpiqa.prior " + " ".join(
            [f"--out {args.out}", f"--recipe {args.recipe}", f"--vae-steps {args.vae_steps}", f"--unet-steps {args.unet_steps}",
             f"--batch-size {args.batch_size}", f"--lr {args.lr}", f"--seed {args.seed}", *args.overrides]
        ),
        "source": source,
        "seconds": round(seconds, 1),
        "threads": args.threads,
        "torch": torch.__version__,
        **log,
    }
    path = save_prior(vae, unet, args.out, provenance)
    print(f"wrote {path} in {seconds:.0f} s (VAE loss {log['vae_loss_first_last']}, U-Net loss {log['unet_loss_first_last']})")


if __name__ == "__main__":
    main()
