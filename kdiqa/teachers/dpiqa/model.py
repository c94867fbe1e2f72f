"""The DP-IQA teacher: Stable Diffusion's U-Net as a quality feature extractor (RomGai/DP-IQA).

image ─┬─ frozen VAE encoder → latent (mean, or a seeded sample) → shift/scale ─┐
       │                                                                       ▼
       └─ T2I-Adapter → residuals ───────────────────────► U-Net at timestep t (default 1, no noise)
   quality prompts → CLIP embeddings (buffer) → t + γ·MLP(t) ──► cross-attention  │
                                                                                  ▼
                       outputs of every up block → quality feature decoder → quality_map → score

The constructor builds the architecture from its JSON options, with random weights and seeded random
prompt embeddings; weights come in through class methods (the class docstring lists the recipe options
that reach them). The state dict holds the encoded prompts (the ``prompt_embeddings`` buffer), so a
saved teacher reloads without the SD checkpoint or the text encoder.

Input: views in [0, 1] (kdiqa's convention). ``input_range="[-1,1]"`` (default) maps them to
[-1, 1] inside, the range the VAE was trained on; ``input_range="[0,1]"`` feeds them unchanged,
as the official code does, for weights trained by it (the default with ``official_weights``). Both
the VAE and the image adapter see the same tensor; with ``image_adapter.input: rgb+lcn`` the adapter
also gets that image's local contrast normalisation as three more channels (what a small adapter
trained from scratch learns quality from fastest; see :func:`teachers.dpiqa.adapters.local_contrast_normalise`).

Trainable parts (``requires_grad``; :meth:`DPIQATeacher.trainable_parameters` lists them): the image
adapter (unless ``image_adapter.trainable`` is false), the text adapter, the decoder and the U-Net per
``unet_trainable``: ``full`` (official) = all of it except ``conv_norm_out``/``conv_out``, which only
feed the unused noise prediction and would never receive a gradient (DDP would then need
``find_unused_parameters``); ``up_blocks`` = only the up blocks; ``frozen`` = none. The VAE is always
frozen and kept in eval mode. The prompt embeddings are a buffer, never trained.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdiqa.config.schema import check_choice
from kdiqa.errors import CheckpointError, ConfigError
from kdiqa.registry import TEACHERS
from kdiqa.teachers.base import Teacher, TeacherOutput
from kdiqa.teachers.dpiqa.adapters import (
    IMAGE_ADAPTER_INPUTS,
    TextAdapter,
    build_image_adapter,
    build_prompts,
    image_adapter_input,
    prompt_embeddings_from,
    random_prompt_embeddings,
)
from kdiqa.teachers.dpiqa.architecture import (
    INPUT_RANGES,
    LATENT_MODES,
    UNET_OUTPUT_MODULES,
    UNET_TRAINABLE,
    check_unet_for_adapter,
    feature_shapes_from_config,
    latent_affine,
    merge_options,
    plain_stats,
    public_config,
    vae_downscale,
)
from kdiqa.teachers.dpiqa.decoder import QualityFeatureDecoder
from kdiqa.teachers.dpiqa.loading import load_stable_diffusion
from kdiqa.teachers.dpiqa.official import load_official_teacher, read_official_teacher
from kdiqa.teachers.dpiqa.presets import SD_FAMILIES, get_preset
from kdiqa.teachers.dpiqa.unet import seeded_noise, up_block_outputs

# seed offsets so that the latent sample and the U-Net noise never share a random stream
_LATENT_STREAM, _NOISE_STREAM = 0, 1


@TEACHERS.register("dpiqa")
class DPIQATeacher(Teacher):
    """DP-IQA (Stable Diffusion U-Net + text/image adapters + quality feature decoder).

    Every option is JSON (recipe: ``teacher.options.<name>``); ``preset`` (``tiny``/``sd15``/``sd21``)
    supplies the defaults. Weight files (``from_options``; ``initialised_from`` records them):
      sd_checkpoint      SD diffusers folder or one .safetensors/.ckpt file (:meth:`from_stable_diffusion`;
                         preset: its family unless given); sd_config: unet/vae configs for another architecture
      official_weights   a released DP-IQA teacher, …_model_plcc_best.pth (:meth:`from_official`; preset sd15,
                         input_range "[0,1]" unless given); it holds VAE and U-Net, built weightless and assigned
      text_encoder       CLIP folder to encode the prompts (default: the checkpoint's text_encoder/)
      prompt_embeddings  (N, D) embedding file, or "random"; either of these two alone: :meth:`from_prompts`
    Architecture: unet, vae (diffusers configs, or built modules), image_adapter {enabled, adapter_type,
    num_res_blocks, trainable, input ("rgb" official | "rgb+lcn")}, text_adapter {hidden, gamma_init},
    decoder {width, head_channels, mlp_hidden, map_size, se_reduction}, prompt_template/qualities/scenes/
    distortions, image_size (nominal, for shapes). Forward: input_range, latent ("mean" | "sample"),
    latent_stats ([mean, std] → standardise instead of SD's scaling factor; "auto": fitted in
    :meth:`prepare`), timestep, noise_std, seed (None: unseeded sampling). Training: unet_trainable,
    gradient_checkpointing.
    """

    name = "dpiqa"
    weight_options = ("sd_checkpoint", "sd_config", "official_weights", "text_encoder", "prompt_embeddings")

    def __init__(
        self,
        *,
        preset: str = "tiny",
        # architecture (preset defaults; unet/vae are diffusers configs merged key by key, or built modules)
        unet: dict[str, Any] | nn.Module | None = None,
        vae: dict[str, Any] | nn.Module | None = None,
        image_adapter: dict[str, Any] | None = None,
        text_adapter: dict[str, Any] | None = None,
        decoder: dict[str, Any] | None = None,
        prompt_template: str | None = None,
        qualities: Sequence[str] | None = None,
        scenes: Sequence[str] | None = None,
        distortions: Sequence[str] | None = None,
        image_size: int | None = None,
        # forward behaviour
        input_range: str = "[-1,1]",
        latent: str = "mean",
        latent_stats: Sequence[Any] | str | None = None,
        timestep: int = 1,
        noise_std: float = 0.0,
        seed: int | None = 0,
        # training policy
        unet_trainable: str = "full",
        gradient_checkpointing: bool = False,
        initialised_from: dict[str, Any] | None = None,
    ):
        check_choice("teacher.options.input_range", input_range, INPUT_RANGES)
        check_choice("teacher.options.latent", latent, LATENT_MODES)
        check_choice("teacher.options.unet_trainable", unet_trainable, UNET_TRAINABLE)
        if noise_std < 0:
            raise ConfigError(f"teacher.options.noise_std: must be >= 0, got {noise_std!r}")
        # "auto": standardise latents with statistics of the training views, fitted in prepare()
        auto_latent_stats = isinstance(latent_stats, str) and latent_stats == "auto"
        defaults = get_preset(preset)
        unet_cfg = public_config(unet.config) if isinstance(unet, nn.Module) else merge_options(defaults["unet"], unet, "unet")
        vae_cfg = public_config(vae.config) if isinstance(vae, nn.Module) else merge_options(defaults["vae"], vae, "vae")
        image_adapter_cfg = merge_options(defaults["image_adapter"], image_adapter, "image_adapter")
        image_adapter_cfg.setdefault("input", "rgb")
        check_choice("teacher.options.image_adapter.input", image_adapter_cfg["input"], tuple(IMAGE_ADAPTER_INPUTS))
        qualities = list(qualities if qualities is not None else defaults["qualities"])
        scenes = list(scenes if scenes is not None else defaults["scenes"])
        distortions = list(distortions if distortions is not None else defaults["distortions"])
        super().__init__(
            unet=unet_cfg, vae=vae_cfg, image_adapter=image_adapter_cfg,
            text_adapter=merge_options(defaults["text_adapter"], text_adapter, "text_adapter"),
            decoder=merge_options(defaults["decoder"], decoder, "decoder"),
            prompt_template=prompt_template or defaults["prompt_template"], qualities=qualities, scenes=scenes,
            distortions=distortions, image_size=int(image_size or defaults["image_size"]),
            latent_stats=None if auto_latent_stats else plain_stats(latent_stats), timestep=int(timestep),
            noise_std=float(noise_std), gradient_checkpointing=bool(gradient_checkpointing),
        )
        from diffusers import AutoencoderKL, UNet2DConditionModel  # deferred: importing diffusers takes seconds

        cfg = self.config
        self._auto_latent_stats = auto_latent_stats
        self.prompts = build_prompts(qualities, scenes, distortions, cfg["prompt_template"])
        self.vae_downscale = vae_downscale(vae_cfg)
        channels = list(unet_cfg["block_out_channels"])
        if image_adapter_cfg.get("enabled", True):
            check_unet_for_adapter(unet_cfg)
        self.unet = unet if isinstance(unet, nn.Module) else UNet2DConditionModel.from_config(unet_cfg)
        self.vae = vae if isinstance(vae, nn.Module) else AutoencoderKL.from_config(vae_cfg)
        self.image_adapter = (
            build_image_adapter(
                channels, self.vae_downscale, int(image_adapter_cfg["num_res_blocks"]),
                image_adapter_cfg.get("adapter_type", "full_adapter"), image_adapter_cfg["input"],
            )
            if image_adapter_cfg.get("enabled", True)
            else None
        )
        text_cfg, decoder_cfg = cfg["text_adapter"], cfg["decoder"]
        self.text_adapter = TextAdapter(int(unet_cfg["cross_attention_dim"]), text_cfg.get("hidden"), float(text_cfg["gamma_init"]))
        self.decoder = QualityFeatureDecoder(
            in_channels=list(reversed(channels)),
            width=int(decoder_cfg["width"]),
            head_channels=list(decoder_cfg["head_channels"]),
            mlp_hidden=int(decoder_cfg["mlp_hidden"]),
            map_size=int(decoder_cfg["map_size"]),
            se_reduction=int(decoder_cfg["se_reduction"]),
        )
        self._initial_buffers()
        self.vae.eval()
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.apply_trainable_policy()

    def _initial_buffers(self) -> None:
        """Seeded random prompt embeddings (a file or text encoder may replace them: :meth:`_read_prompts`)
        and the latent shift/scale, on the parameters' device (a meta-device build stays weightless)."""
        dim = int(self.config["unet"]["cross_attention_dim"])
        device = self.text_adapter.gamma.device
        embeddings = random_prompt_embeddings(len(self.prompts), dim, self.config["seed"] or 0)
        self.register_buffer("prompt_embeddings", embeddings.to(device))
        vae_cfg = self.config["vae"]
        shift, scale = latent_affine(self.config["latent_stats"], int(vae_cfg.get("latent_channels", 4)), vae_cfg)
        self.register_buffer("latent_shift", shift.to(device))
        self.register_buffer("latent_scale", scale.to(device))

    # ------------------------------------------------------------------ weights
    @classmethod
    def from_options(cls, sd_checkpoint: str | None = None, sd_config: str | None = None, official_weights: str | None = None,
                     text_encoder: str | None = None, prompt_embeddings: str | None = None, **arch: Any) -> DPIQATeacher:
        prompts = {"text_encoder": text_encoder, "prompt_embeddings": prompt_embeddings}
        if official_weights is not None:
            if sd_checkpoint is not None:
                raise ConfigError(
                    "teacher.options: give official_weights or sd_checkpoint, not both (the released file holds its own VAE and U-Net)"
                )
            return cls.from_official(official_weights, **prompts, **arch)
        if sd_checkpoint is not None:
            return cls.from_stable_diffusion(sd_checkpoint, sd_config, **prompts, **arch)
        if text_encoder is not None or prompt_embeddings is not None:
            return cls.from_prompts(**prompts, **arch)
        return cls(**arch)

    @classmethod
    def from_stable_diffusion(cls, path: str | Path, sd_config: str | None = None, text_encoder: str | None = None,
                              prompt_embeddings: str | None = None, *, preset: str | None = None, **arch: Any) -> DPIQATeacher:
        """U-Net and VAE of a Stable Diffusion checkpoint (:func:`teachers.dpiqa.loading.load_stable_diffusion`);
        the prompts encoded by its text encoder unless ``text_encoder``/``prompt_embeddings`` say otherwise."""
        if arch.get("unet") is not None or arch.get("vae") is not None:
            raise ConfigError("teacher.options.unet/vae: the architecture comes from sd_checkpoint; remove unet/vae")
        parts = load_stable_diffusion(path, sd_config, family=preset if preset in SD_FAMILIES else "sd15")
        preset = preset or (parts.family if parts.family in SD_FAMILIES else "sd15")
        teacher = cls(preset=preset, **{**arch, "unet": parts.unet, "vae": parts.vae})
        prompts = teacher._read_prompts(text_encoder or parts.text_encoder, prompt_embeddings, parts.source)
        teacher.config["initialised_from"] = {"sd_checkpoint": parts.source, "family": parts.family, "prompts": prompts}
        return teacher

    @classmethod
    def from_official(cls, path: str | Path, text_encoder: str | None = None, prompt_embeddings: str | None = None,
                      **arch: Any) -> DPIQATeacher:
        """A teacher the DP-IQA authors released (``{dataset}_model_plcc_best.pth``), with its prompt
        embeddings (the official ``quality_embeddings.pth``) or a CLIP text encoder to make them."""
        if prompt_embeddings is None and text_encoder is None:
            raise CheckpointError(
                f"{path}: a released DP-IQA teacher holds no prompt embeddings; set teacher.options.prompt_embeddings "
                "to the official quality_embeddings.pth (1485 x 768), or text_encoder to a CLIP ViT-L/14 folder"
            )
        if arch.get("input_range") == "[-1,1]":
            warnings.warn(
                f"{path}: the released DP-IQA weights were trained on images in [0, 1]; input_range '[-1,1]' changes their scores",
                stacklevel=3,
            )
        arch = {**arch, "preset": arch.get("preset") or "sd15", "input_range": arch.get("input_range") or "[0,1]"}
        state = read_official_teacher(path)
        # released weights replace every tensor: build weightless, then take the file's tensors (assign)
        with torch.device("meta"):
            teacher = cls(**arch)
        load_official_teacher(teacher, state, path)
        teacher._initial_buffers()
        teacher.apply_trainable_policy()
        prompts = teacher._read_prompts(text_encoder, prompt_embeddings)
        teacher.config["initialised_from"] = {"sd_checkpoint": None, "family": None, "prompts": prompts, "official_weights": str(path)}
        return teacher

    @classmethod
    def from_prompts(cls, text_encoder: str | None = None, prompt_embeddings: str | None = None, **arch: Any) -> DPIQATeacher:
        """Random U-Net and VAE, with prompt embeddings from a file or a CLIP text encoder."""
        teacher = cls(**arch)
        prompts = teacher._read_prompts(text_encoder, prompt_embeddings)
        teacher.config["initialised_from"] = {"sd_checkpoint": None, "family": None, "prompts": prompts}
        return teacher

    def _read_prompts(self, text_encoder: str | Path | None, embeddings_file: str | None, checkpoint: str | None = None) -> str:
        """Replace the random prompt embeddings (see :func:`~teachers.dpiqa.adapters.prompt_embeddings_from`)."""
        emb, source = prompt_embeddings_from(self.prompts, self.prompt_embeddings.shape[1], text_encoder, embeddings_file, checkpoint)
        if emb is not None:
            self.prompt_embeddings = emb.to(self.prompt_embeddings.device)
        return source

    # ------------------------------------------------------------------ training policy
    def apply_trainable_policy(self) -> None:
        """Set ``requires_grad`` from ``unet_trainable`` and ``image_adapter.trainable`` (see module doc)."""
        policy = self.config["unet_trainable"]
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(policy == "full")
        if policy == "full":
            for name in UNET_OUTPUT_MODULES:
                module = getattr(self.unet, name, None)
                if module is not None:
                    module.requires_grad_(False)
        elif policy == "up_blocks":
            self.unet.up_blocks.requires_grad_(True)
        if self.image_adapter is not None:
            self.image_adapter.requires_grad_(bool(self.config["image_adapter"].get("trainable", True)))
        self.text_adapter.requires_grad_(True)
        self.decoder.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser should see (those the freezing policy leaves trainable)."""
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> DPIQATeacher:
        super().train(mode)
        self.vae.eval()  # frozen: never switch it to training behaviour
        return self

    # ------------------------------------------------------------------ forward
    @property
    def input_multiple(self) -> int:
        """Input sides must be a multiple of this (VAE ×d, then one halving per U-Net level but the last)."""
        return self.vae_downscale * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """VAE latent (mean or sample) before shift/scale; ``x`` already in the model's input range."""
        posterior = self.vae.encode(x).latent_dist
        if self.config["latent"] == "mean":
            return posterior.mean
        return posterior.mean + posterior.std * seeded_noise(posterior.mean, self.config["seed"], _LATENT_STREAM)

    def _to_model_range(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"dpiqa expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        m = self.input_multiple
        if images.shape[-2] % m or images.shape[-1] % m:
            raise ConfigError(
                f"view.size: dpiqa needs image sides that are multiples of {m}, got {tuple(images.shape[-2:])}"
            )
        return images * 2 - 1 if self.config["input_range"] == "[-1,1]" else images

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        x = self._to_model_range(images)
        latents = (self.encode_latents(x) - self.latent_shift[:, None, None]) * self.latent_scale[:, None, None]
        if self.config["noise_std"] > 0:
            latents = latents + self.config["noise_std"] * seeded_noise(latents, self.config["seed"], _NOISE_STREAM)
        batch = images.shape[0]
        tokens = self.text_adapter(self.prompt_embeddings).unsqueeze(0).expand(batch, -1, -1)
        residuals = None
        if self.image_adapter is not None:
            adapter_in = image_adapter_input(images, x, self.config["image_adapter"]["input"])
            residuals = list(self.image_adapter(adapter_in))
        timesteps = torch.full((batch,), self.config["timestep"], dtype=torch.long, device=images.device)
        up = up_block_outputs(self.unet, latents, timesteps, tokens, residuals)
        score, quality_map = self.decoder(up)
        features = {"quality_map": quality_map}
        features.update({f"unet.up_blocks.{i}": f for i, f in enumerate(up)})
        return TeacherOutput(score=score, features=features)

    # ------------------------------------------------------------------ utilities
    def prepare(self, train_loader: Any, max_images: int = 512) -> None:
        """With ``latent_stats: auto``, fit the latent statistics on up to ``max_images`` training views."""
        if not self._auto_latent_stats:
            return
        batches, seen = [], 0
        for batch in train_loader:
            batches.append(batch["image"])
            seen += len(batch["image"])
            if seen >= max_images:
                break
        device = self.latent_shift.device
        self.fit_latent_stats(torch.cat(batches)[:max_images].to(device))
        self._auto_latent_stats = False

    @torch.no_grad()
    def fit_latent_stats(self, images: torch.Tensor) -> list[list[float]]:
        """Standardise latents by per-channel statistics of these views (for random VAEs, whose latents
        have nothing to do with SD's 0.18215); stored in the buffers and in ``config['latent_stats']``."""
        was_training = self.training
        self.eval()
        try:
            z = self.encode_latents(self._to_model_range(images))
        finally:
            self.train(was_training)
        mean = z.mean(dim=(0, 2, 3))
        std = z.std(dim=(0, 2, 3)).clamp_min(1e-6)
        self.latent_shift.copy_(mean)
        self.latent_scale.copy_(1.0 / std)
        stats = [mean.tolist(), std.tolist()]
        self.config["latent_stats"] = stats
        return stats

    def feature_shapes(self, image_size: int | tuple[int, int]) -> dict[str, tuple[int, ...]]:
        """Shapes computed from the configs (no forward pass)."""
        return feature_shapes_from_config(self.config, image_size)

    @classmethod
    def describe(cls, preset: str = "tiny", **options: Any) -> dict[str, Any]:
        """Parameter counts per part and feature shapes at the preset's resolution.

        Built on the meta device: no checkpoint, no memory for weights, no forward pass.
        """
        with torch.device("meta"):
            teacher = cls(preset=preset, **options)
        parts = {"unet": teacher.unet, "vae": teacher.vae, "text_adapter": teacher.text_adapter,
                 "image_adapter": teacher.image_adapter, "decoder": teacher.decoder}
        params = {k: (sum(p.numel() for p in m.parameters()) if m is not None else 0) for k, m in parts.items()}
        params["total"] = sum(params.values())
        size = teacher.config["image_size"]
        return {
            "teacher": "dpiqa",
            "preset": preset,
            "image_size": size,
            "input_range": teacher.config["input_range"],
            "unet_trainable": teacher.config["unet_trainable"],
            "prompts": len(teacher.prompts),
            "prompt_dim": int(teacher.config["unet"]["cross_attention_dim"]),
            "parameters": params,
            "trainable_parameters": sum(p.numel() for p in teacher.trainable_parameters()),
            "features": {k: list(v) for k, v in teacher.feature_shapes(size).items()},
        }


describe = DPIQATeacher.describe
