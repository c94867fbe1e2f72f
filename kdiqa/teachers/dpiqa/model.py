"""The DP-IQA teacher: Stable Diffusion's U-Net as a quality feature extractor (RomGai/DP-IQA).

image ─┬─ frozen VAE encoder → latent (mean, or a seeded sample) → shift/scale ─┐
       │                                                                       ▼
       └─ T2I-Adapter → residuals ───────────────────────► U-Net at timestep t (default 1, no noise)
   quality prompts → CLIP embeddings (buffer) → t + γ·MLP(t) ──► cross-attention  │
                                                                                  ▼
                       outputs of every up block → quality feature decoder → quality_map → score

One clear way to get weights in: the constructor builds the architecture from its (JSON) options;
the *weight source* options ``sd_checkpoint``, ``sd_config``, ``official_weights``, ``text_encoder`` and
a ``prompt_embeddings`` file are read at that first build only and then cleared in ``self.config``
(``initialised_from`` records where the weights came from). ``official_weights`` is a teacher the
DP-IQA authors released (:mod:`teachers.dpiqa.official` maps its keys): it holds the VAE and U-Net
too, so no SD checkpoint is read, and the modules are built on the meta device and take the file's
memory-mapped tensors as they are (no second copy of a 1B-parameter model). ``save_teacher`` writes
that config plus the state dict, whose ``prompt_embeddings`` buffer holds the encoded prompts, so
``load_teacher`` rebuilds the architecture and loads everything back without the SD checkpoint or
text encoder.

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

import contextlib
import copy
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from kdiqa.errors import CheckpointError, ConfigError
from kdiqa.registry import TEACHERS
from kdiqa.teacher import Teacher, TeacherOutput
from kdiqa.teachers.dpiqa.adapters import (
    IMAGE_ADAPTER_INPUTS,
    TextAdapter,
    build_image_adapter,
    build_prompts,
    encode_prompts,
    image_adapter_input,
    random_prompt_embeddings,
    read_prompt_embeddings,
)
from kdiqa.teachers.dpiqa.decoder import QualityFeatureDecoder
from kdiqa.teachers.dpiqa.presets import get_preset

INPUT_RANGES = ("[-1,1]", "[0,1]")
LATENT_MODES = ("mean", "sample")
UNET_TRAINABLE = ("full", "frozen", "up_blocks")
# U-Net modules that only produce the noise prediction, which DP-IQA never uses
UNET_OUTPUT_MODULES = ("conv_norm_out", "conv_out")
# seed offsets so that the latent sample and the U-Net noise never share a random stream
_LATENT_STREAM, _NOISE_STREAM = 0, 1


def _merge(base: dict[str, Any] | None, override: dict[str, Any] | None, key: str) -> dict[str, Any]:
    if override is not None and not isinstance(override, dict):
        raise ConfigError(f"teacher.options.{key}: expected a mapping, got {type(override).__name__}")
    merged = dict(base or {})
    merged.update(override or {})
    return merged


def _public_config(config: Any) -> dict[str, Any]:
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


@TEACHERS.register("dpiqa")
class DPIQATeacher(Teacher):
    """DP-IQA (Stable Diffusion U-Net + text/image adapters + quality feature decoder).

    Every option is JSON (recipe: ``teacher.options.<name>``); ``preset`` supplies the defaults
    (``tiny``/``sd15``/``sd21``; default: the checkpoint's family when ``sd_checkpoint`` is given, else
    ``tiny``). Weight sources, used at the first build only:
      sd_checkpoint      SD diffusers folder or one .safetensors/.ckpt file (absent: random weights)
      sd_config          diffusers-layout folder of unet/vae configs for a single file of another architecture
      official_weights   a released DP-IQA teacher state dict (…_model_plcc_best.pth; preset sd15 by default)
      text_encoder       CLIP folder to encode the prompts (default: the checkpoint's text_encoder/)
      prompt_embeddings  (N, D) embedding file, or "random"
    Architecture: unet, vae (diffusers configs), image_adapter {enabled, adapter_type, num_res_blocks,
    trainable, input ("rgb" official | "rgb+lcn")}, text_adapter {hidden, gamma_init}, decoder {width, head_channels, mlp_hidden, map_size,
    se_reduction}, prompt_template/qualities/scenes/distortions, image_size (nominal, for shapes).
    Forward: input_range, latent ("mean" | "sample"), latent_stats ([mean, std] → standardise instead of
    SD's scaling factor), timestep, noise_std, seed (None: unseeded sampling). Training:
    unet_trainable, gradient_checkpointing.
    """

    name = "dpiqa"

    def __init__(
        self,
        *,
        preset: str | None = None,
        # weight sources, read at the first build only (then cleared in self.config)
        sd_checkpoint: str | None = None,
        sd_config: str | None = None,
        official_weights: str | None = None,
        text_encoder: str | None = None,
        prompt_embeddings: str | None = None,
        # architecture (preset defaults; unet/vae are diffusers configs merged key by key)
        unet: dict[str, Any] | None = None,
        vae: dict[str, Any] | None = None,
        image_adapter: dict[str, Any] | None = None,
        text_adapter: dict[str, Any] | None = None,
        decoder: dict[str, Any] | None = None,
        prompt_template: str | None = None,
        qualities: Sequence[str] | None = None,
        scenes: Sequence[str] | None = None,
        distortions: Sequence[str] | None = None,
        image_size: int | None = None,
        # forward behaviour ("[0,1]" by default with official_weights, else "[-1,1]")
        input_range: str | None = None,
        latent: str = "mean",
        latent_stats: Sequence[Any] | None = None,
        timestep: int = 1,
        noise_std: float = 0.0,
        seed: int | None = 0,
        # training policy
        unet_trainable: str = "full",
        gradient_checkpointing: bool = False,
        initialised_from: dict[str, Any] | None = None,
    ):
        official_state = None
        if official_weights is not None:
            official_state = self._read_official(official_weights, sd_checkpoint, prompt_embeddings, text_encoder, input_range)
            preset = preset or "sd15"
        input_range = input_range or ("[0,1]" if official_state is not None else "[-1,1]")
        _check_choice("input_range", input_range, INPUT_RANGES)
        _check_choice("latent", latent, LATENT_MODES)
        _check_choice("unet_trainable", unet_trainable, UNET_TRAINABLE)
        if noise_std < 0:
            raise ConfigError(f"teacher.options.noise_std: must be >= 0, got {noise_std!r}")

        # "auto": standardise latents with statistics of the training views, fitted in prepare()
        self._auto_latent_stats = isinstance(latent_stats, str) and latent_stats == "auto"
        if self._auto_latent_stats:
            latent_stats = None
        components = None
        if sd_checkpoint is not None:
            from kdiqa.teachers.dpiqa.loading import load_stable_diffusion

            if unet is not None or vae is not None:
                raise ConfigError("teacher.options.unet/vae: the architecture comes from sd_checkpoint; remove unet/vae")
            components = load_stable_diffusion(sd_checkpoint, sd_config, family=preset if preset in ("sd15", "sd21") else "sd15")
            if preset is None:
                preset = components.family if components.family in ("sd15", "sd21") else "sd15"
        preset = preset or "tiny"
        defaults = get_preset(preset)

        unet_cfg = _public_config(components.unet.config) if components else _merge(defaults["unet"], unet, "unet")
        vae_cfg = _public_config(components.vae.config) if components else _merge(defaults["vae"], vae, "vae")
        image_adapter_cfg = _merge(defaults["image_adapter"], image_adapter, "image_adapter")
        image_adapter_cfg.setdefault("input", "rgb")
        _check_choice("image_adapter.input", image_adapter_cfg["input"], tuple(IMAGE_ADAPTER_INPUTS))
        text_adapter_cfg = _merge(defaults["text_adapter"], text_adapter, "text_adapter")
        decoder_cfg = _merge(defaults["decoder"], decoder, "decoder")
        prompt_template = prompt_template or defaults["prompt_template"]
        qualities = list(qualities if qualities is not None else defaults["qualities"])
        scenes = list(scenes if scenes is not None else defaults["scenes"])
        distortions = list(distortions if distortions is not None else defaults["distortions"])
        image_size = int(image_size or defaults["image_size"])

        super().__init__(
            preset=preset, sd_checkpoint=None, sd_config=None, official_weights=None, text_encoder=None,
            prompt_embeddings=None,
            unet=unet_cfg, vae=vae_cfg, image_adapter=image_adapter_cfg, text_adapter=text_adapter_cfg,
            decoder=decoder_cfg, prompt_template=prompt_template, qualities=qualities, scenes=scenes,
            distortions=distortions, image_size=image_size, input_range=input_range, latent=latent,
            latent_stats=_plain_stats(latent_stats), timestep=int(timestep), noise_std=float(noise_std), seed=seed,
            unet_trainable=unet_trainable, gradient_checkpointing=bool(gradient_checkpointing),
            initialised_from=initialised_from,
        )

        from diffusers import AutoencoderKL, UNet2DConditionModel

        self.prompts = build_prompts(qualities, scenes, distortions, prompt_template)
        dim = int(unet_cfg["cross_attention_dim"])
        self.vae_downscale = vae_downscale(vae_cfg)
        channels = list(unet_cfg["block_out_channels"])
        if image_adapter_cfg.get("enabled", True):
            _check_unet_for_adapter(unet_cfg)

        # released weights replace every tensor: build weightless, then take the file's tensors (assign)
        with torch.device("meta") if official_state is not None else contextlib.nullcontext():
            self.unet = components.unet if components else UNet2DConditionModel.from_config(unet_cfg)
            self.vae = components.vae if components else AutoencoderKL.from_config(vae_cfg)
            self.image_adapter = (
                build_image_adapter(
                    channels, self.vae_downscale, int(image_adapter_cfg["num_res_blocks"]),
                    image_adapter_cfg.get("adapter_type", "full_adapter"), image_adapter_cfg["input"],
                )
                if image_adapter_cfg.get("enabled", True)
                else None
            )
            self.text_adapter = TextAdapter(dim, text_adapter_cfg.get("hidden"), float(text_adapter_cfg["gamma_init"]))
            self.decoder = QualityFeatureDecoder(
                in_channels=list(reversed(channels)),
                width=int(decoder_cfg["width"]),
                head_channels=list(decoder_cfg["head_channels"]),
                mlp_hidden=int(decoder_cfg["mlp_hidden"]),
                map_size=int(decoder_cfg["map_size"]),
                se_reduction=int(decoder_cfg["se_reduction"]),
            )
        if official_state is not None:
            from kdiqa.teachers.dpiqa.official import load_official_teacher

            load_official_teacher(self, official_state, official_weights)

        embeddings, prompt_source = self._initial_prompt_embeddings(
            components, text_encoder, prompt_embeddings, dim, seed
        )
        # on the parameters' device (a meta-device build, as in describe(), stays weightless)
        self.register_buffer("prompt_embeddings", embeddings.to(self.text_adapter.gamma.device))

        latent_channels = int(vae_cfg.get("latent_channels", 4))
        shift, scale = self._latent_affine(self.config["latent_stats"], latent_channels, vae_cfg)
        self.register_buffer("latent_shift", shift)
        self.register_buffer("latent_scale", scale)

        if components is not None or text_encoder is not None or prompt_embeddings is not None or official_state is not None:
            self.config["initialised_from"] = {
                "sd_checkpoint": components.source if components else None,
                "family": components.family if components else None,
                "prompts": prompt_source,
            }
            if official_state is not None:
                self.config["initialised_from"]["official_weights"] = str(official_weights)
        self.vae.requires_grad_(False)
        self.vae.eval()
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.apply_trainable_policy()

    # ------------------------------------------------------------------ building
    @staticmethod
    def _read_official(
        path: str, sd_checkpoint: str | None, prompt_embeddings: str | None, text_encoder: str | None, input_range: str | None
    ) -> dict[str, torch.Tensor]:
        """The released state dict (memory-mapped), after checking the options that go with it."""
        from kdiqa.teachers.dpiqa.official import read_official_teacher

        if sd_checkpoint is not None:
            raise ConfigError(
                "teacher.options: give official_weights or sd_checkpoint, not both (the released file holds its own VAE and U-Net)"
            )
        if prompt_embeddings is None and text_encoder is None:
            raise CheckpointError(
                f"{path}: a released DP-IQA teacher holds no prompt embeddings; set teacher.options.prompt_embeddings "
                "to the official quality_embeddings.pth (1485 x 768), or text_encoder to a CLIP ViT-L/14 folder"
            )
        if input_range == "[-1,1]":
            warnings.warn(
                f"{path}: the released DP-IQA weights were trained on images in [0, 1]; input_range '[-1,1]' changes their scores",
                stacklevel=3,
            )
        return read_official_teacher(path)

    def _initial_prompt_embeddings(
        self, components: Any, text_encoder: str | None, embeddings_file: str | None, dim: int, seed: int | None
    ) -> tuple[torch.Tensor, str]:
        """Embeddings from (in this order) a file, a text encoder, or random (no checkpoint only)."""
        n = len(self.prompts)
        if embeddings_file == "random":
            return random_prompt_embeddings(n, dim, seed or 0), "random"
        if embeddings_file is not None:
            emb, source = read_prompt_embeddings(embeddings_file), f"file:{embeddings_file}"
            where = embeddings_file
        else:
            encoder = text_encoder or (components.text_encoder if components else None)
            if encoder is None:
                if components is not None:
                    raise CheckpointError(
                        f"{components.source}: no text_encoder/ + tokenizer/ to encode the quality prompts; set "
                        "teacher.options.text_encoder (a CLIP folder), teacher.options.prompt_embeddings (a file), "
                        "or prompt_embeddings: random"
                    )
                return random_prompt_embeddings(n, dim, seed or 0), "random"
            emb, source, where = encode_prompts(self.prompts, encoder), f"text_encoder:{encoder}", str(encoder)
        if tuple(emb.shape) != (n, dim):
            raise CheckpointError(
                f"{where}: prompt embeddings have shape {tuple(emb.shape)}, the teacher needs ({n}, {dim}) "
                f"({n} prompts × the U-Net's cross-attention width)"
            )
        return emb.float().contiguous(), source

    @staticmethod
    def _latent_affine(stats: Any, channels: int, vae_cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
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
    def feature_names(self) -> list[str]:
        return ["quality_map"] + [f"unet.up_blocks.{i}" for i in range(len(self.unet.up_blocks))]

    @property
    def input_multiple(self) -> int:
        """Input sides must be a multiple of this (VAE ×d, then one halving per U-Net level but the last)."""
        return self.vae_downscale * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def _noise(self, like: torch.Tensor, stream: int) -> torch.Tensor:
        """Seeded noise is one (1, C, h, w) draw shared by the batch, so a view's result never depends on
        its batch or position; ``seed: null`` draws fresh per-sample noise (the official behaviour)."""
        seed = self.config["seed"]
        if seed is None:
            return torch.randn_like(like)
        generator = torch.Generator(device="cpu").manual_seed(int(seed) * 2 + stream)
        noise = torch.randn((1, *like.shape[1:]), generator=generator, dtype=torch.float32)
        return noise.to(device=like.device, dtype=like.dtype).expand_as(like)

    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """VAE latent (mean or sample) before shift/scale; ``x`` already in the model's input range."""
        posterior = self.vae.encode(x).latent_dist
        if self.config["latent"] == "mean":
            return posterior.mean
        return posterior.mean + posterior.std * self._noise(posterior.mean, _LATENT_STREAM)

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
            latents = latents + self.config["noise_std"] * self._noise(latents, _NOISE_STREAM)
        batch = images.shape[0]
        tokens = self.text_adapter(self.prompt_embeddings).unsqueeze(0).expand(batch, -1, -1)
        # the U-Net pops residuals off this list: it must be a fresh list on every call
        residuals = None
        if self.image_adapter is not None:
            adapter_in = image_adapter_input(images, x, self.config["image_adapter"]["input"])
            residuals = list(self.image_adapter(adapter_in))
        timesteps = torch.full((batch,), self.config["timestep"], dtype=torch.long, device=images.device)
        up = self._run_unet(latents, timesteps, tokens, residuals)
        score, quality_map = self.decoder(up)
        features = {"quality_map": quality_map}
        features.update({f"unet.up_blocks.{i}": f for i, f in enumerate(up)})
        return TeacherOutput(score=score, features=features)

    def _run_unet(
        self, latents: torch.Tensor, timesteps: torch.Tensor, tokens: torch.Tensor, residuals: list[torch.Tensor] | None
    ) -> list[torch.Tensor]:
        """Run the U-Net and collect every up block's output with temporary forward hooks."""
        captured: list[torch.Tensor | None] = [None] * len(self.unet.up_blocks)

        def store(index: int, _module: nn.Module, _inputs: Any, output: Any) -> None:
            captured[index] = output[0] if isinstance(output, tuple) else output

        handles = [block.register_forward_hook(partial(store, i)) for i, block in enumerate(self.unet.up_blocks)]
        try:
            self.unet(
                latents, timesteps, encoder_hidden_states=tokens,
                down_intrablock_additional_residuals=residuals, return_dict=False,
            )
        finally:
            for handle in handles:
                handle.remove()
        if any(c is None for c in captured):
            raise RuntimeError("dpiqa: an up block of the U-Net did not run; the forward hooks caught nothing")
        return captured  # type: ignore[return-value]

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
        """See :func:`describe` (here so that code holding only the registered class can find it)."""
        return describe(preset, **options)


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"teacher.options.{key}: {value!r} is not one of {', '.join(map(repr, choices))}")


def _plain_stats(stats: Any) -> Any:
    if stats is None:
        return None
    if not isinstance(stats, (list, tuple)) or len(stats) != 2:
        raise ConfigError(f"teacher.options.latent_stats: need [mean, std], got {stats!r}")
    return [s.tolist() if isinstance(s, torch.Tensor) else copy.deepcopy(s) for s in stats]


def _check_unet_for_adapter(unet_cfg: dict[str, Any]) -> None:
    """The T2I residual of a block without cross-attention is added *after* its downsampler, so only a
    last down block may lack cross-attention (as in SD); anything else would mismatch shapes."""
    types = list(unet_cfg["down_block_types"])
    if any("CrossAttn" not in t for t in types[:-1]):
        raise ConfigError(
            f"teacher.options.unet.down_block_types: {types}: every down block but the last needs cross-attention"
        )


def feature_shapes_from_config(config: dict[str, Any], image_size: int | tuple[int, int]) -> dict[str, tuple[int, ...]]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    d = vae_downscale(config["vae"])
    ups = up_block_shapes(config["unet"], (h // d, w // d))
    decoder = config["decoder"]
    map_size = int(decoder["map_size"])
    shapes: dict[str, tuple[int, ...]] = {"quality_map": (int(decoder["head_channels"][-1]), map_size, map_size)}
    shapes.update({f"unet.up_blocks.{i}": s for i, s in enumerate(ups)})
    return shapes


def describe(preset: str = "tiny", **options: Any) -> dict[str, Any]:
    """Parameter counts per part and feature shapes at the preset's resolution.

    Built on the meta device: no checkpoint, no memory for weights, no forward pass.
    """
    for key in ("sd_checkpoint", "official_weights", "text_encoder", "prompt_embeddings"):
        if options.get(key) is not None:
            raise ConfigError(f"describe: {key} is not used here (the architecture comes from the preset)")
    with torch.device("meta"):
        teacher = DPIQATeacher(preset=preset, **options)
    parts = {
        "unet": teacher.unet,
        "vae": teacher.vae,
        "text_adapter": teacher.text_adapter,
        "image_adapter": teacher.image_adapter,
        "decoder": teacher.decoder,
    }
    params = {k: (sum(p.numel() for p in m.parameters()) if m is not None else 0) for k, m in parts.items()}
    params["total"] = sum(params.values())
    trainable = sum(p.numel() for p in teacher.trainable_parameters())
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
        "trainable_parameters": trainable,
        "features": {k: list(v) for k, v in teacher.feature_shapes(size).items()},
    }


__all__ = ["DPIQATeacher", "describe", "feature_shapes_from_config", "up_block_shapes"]
