"""DP-IQA teacher model: architecture facts, loading from disk, freezing policy, persistence."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from kdiqa.errors import CheckpointError, ConfigError
from kdiqa.registry import TEACHERS
from kdiqa.teachers.base import Teacher
from kdiqa.teachers.dpiqa import (
    DPIQATeacher,
    build_prompts,
    describe,
    detect_family,
    get_preset,
    save_prompt_embeddings,
)
from kdiqa.teachers.dpiqa.loading import LDM_CROSS_ATTN_KEY

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def tiny(**options) -> DPIQATeacher:
    torch.manual_seed(0)
    return DPIQATeacher(preset="tiny", **options)


# ---------------------------------------------------------------------------------------- architecture
def test_sd15_preset_has_the_official_sizes_without_building_weights():
    info = describe("sd15")
    p = info["parameters"]
    assert p["unet"] == 859_520_964
    assert p["vae"] == 83_653_863
    assert p["image_adapter"] == 77_369_280  # T2I full adapter ≈ 77.4M
    assert p["text_adapter"] == 2 * (768 * 768 + 768) + 768  # ≈ 1.2M
    assert 42.8e6 < p["decoder"] < 43.0e6
    assert info["prompts"] == 1485 and info["prompt_dim"] == 768 and info["image_size"] == 512
    assert info["features"] == {
        "quality_map": [8, 64, 64],
        "unet.up_blocks.0": [1280, 16, 16],
        "unet.up_blocks.1": [1280, 32, 32],
        "unet.up_blocks.2": [640, 64, 64],
        "unet.up_blocks.3": [320, 64, 64],
    }
    # the trainable set excludes the VAE and the U-Net's noise-prediction head
    assert info["trainable_parameters"] == p["total"] - p["vae"] - (320 * 4 * 9 + 4) - 2 * 320


@pytest.mark.parametrize("preset", ["sd15", "sd21"])
def test_true_size_wiring_on_the_meta_device(preset):
    """A 512² forward with weightless (meta) tensors: adapter residuals, cross-attention width and the
    analytic feature shapes all agree with the real modules, at no compute cost."""
    with torch.device("meta"):
        teacher = DPIQATeacher(preset=preset).eval()
        with torch.no_grad():
            out = teacher(torch.empty(2, 3, 512, 512))
    assert out.score.shape == (2,)
    assert {k: tuple(v.shape[1:]) for k, v in out.features.items()} == teacher.feature_shapes(512)


def test_sd21_preset_uses_1024_wide_cross_attention():
    info = describe("sd21")
    assert info["prompt_dim"] == 1024
    assert info["parameters"]["unet"] == 865_910_724
    assert info["features"]["unet.up_blocks.3"] == [320, 64, 64]


@pytest.mark.parametrize("family, context_dim", [("sd15", 768), ("sd21", 1024)])
def test_packaged_configs_load_through_diffusers_offline(family, context_dim):
    """from_single_file reads exactly this (config=<folder>, subfolder=unet/vae): it must resolve locally."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from kdiqa.teachers.dpiqa import packaged_config_dir

    folder = str(packaged_config_dir(family))
    unet = UNet2DConditionModel.load_config(folder, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.load_config(folder, subfolder="vae", local_files_only=True)
    assert unet["cross_attention_dim"] == context_dim and list(unet["block_out_channels"]) == [320, 640, 1280, 1280]
    assert vae["latent_channels"] == 4 and vae["scaling_factor"] == 0.18215


def test_official_prompt_set():
    prompts = build_prompts()
    assert len(prompts) == len(set(prompts)) == 1485
    assert prompts[0] == "a photo of a animal with jpeg2000 compression artifacts, which is of bad quality"
    assert prompts[-1] == "a photo of a others with other realistic artifacts, which is of perfect quality"


def test_registered_and_built_through_the_registry():
    teacher = TEACHERS.build("dpiqa", preset="tiny")
    assert isinstance(teacher, DPIQATeacher) and teacher.name == "dpiqa"
    assert TEACHERS.get("dpiqa").describe("tiny")["parameters"]["unet"] == sum(p.numel() for p in teacher.unet.parameters())
    json.dumps(teacher.config)  # every option is JSON


def test_tiny_features_names_and_shapes(images):
    teacher = tiny().eval()
    with torch.no_grad():
        out = teacher(images)
    assert out.score.shape == (3,)
    assert set(out.features) == {"quality_map", "unet.up_blocks.0", "unet.up_blocks.1"}
    got = {k: tuple(v.shape[1:]) for k, v in out.features.items()}
    assert got == teacher.feature_shapes(64) == {
        "quality_map": (8, 16, 16), "unet.up_blocks.0": (64, 16, 16), "unet.up_blocks.1": (32, 16, 16),
    }
    assert (out.features["quality_map"] >= 0).all()  # ReLU after the last 1×1 conv, as in the official code
    # other resolutions: the decoder resizes every level to its fixed map size
    with torch.no_grad():
        out128 = teacher(torch.rand(1, 3, 128, 128))
    assert {k: tuple(v.shape[1:]) for k, v in out128.features.items()} == teacher.feature_shapes(128)
    assert out128.features["unet.up_blocks.1"].shape[-1] == 32 and out128.features["quality_map"].shape[-1] == 16


def test_bad_input_size_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"view.size: .*multiples of 8"):
        tiny()(torch.rand(1, 3, 60, 60))


def test_two_consecutive_training_forwards_get_fresh_residual_lists(images):
    teacher = tiny().train()
    seen: list[int] = []
    teacher.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(len(kwargs["down_intrablock_additional_residuals"])), with_kwargs=True
    )
    for _ in range(2):
        teacher(images).score.sum().backward()
    assert seen == [2, 2]  # a full list each call, although the U-Net pops it empty
    teacher.eval()
    with torch.no_grad():
        assert torch.equal(teacher(images).score, teacher(images).score)


def test_input_range_option_sets_what_the_vae_and_adapter_see(images):
    seen: dict[str, torch.Tensor] = {}
    for input_range in ("[-1,1]", "[0,1]"):
        teacher = tiny(input_range=input_range).eval()
        teacher.vae.encoder.register_forward_pre_hook(lambda m, a, r=input_range: seen.__setitem__(r, a[0]))
        with torch.no_grad():
            teacher(images)
    assert torch.allclose(seen["[-1,1]"], images * 2 - 1)
    assert torch.equal(seen["[0,1]"], images)
    with pytest.raises(ConfigError, match="input_range"):
        tiny(input_range="0-255")


def test_seeded_latent_sample_and_noise_are_reproducible_and_batch_independent(images):
    mean = tiny().eval()
    sampled = tiny(latent="sample", noise_std=0.1, seed=3).eval()
    sampled.load_state_dict(mean.state_dict())
    with torch.no_grad():
        a, b = sampled(images).score, sampled(images).score
        alone = sampled(images[1:2]).score
        reference = mean(images).score
    assert torch.equal(a, b)
    assert torch.allclose(a[1:2], alone, atol=1e-5)
    assert not torch.allclose(a, reference)


# ---------------------------------------------------------------------------------------- freezing policy
@pytest.mark.parametrize("policy", ["full", "up_blocks", "frozen"])
def test_gradients_reach_exactly_the_trainable_parts(policy, images):
    teacher = tiny(unet_trainable=policy).train()
    teacher(images).score.sum().backward()
    trainable = {n for n, p in teacher.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in teacher.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    assert {id(p) for p in teacher.trainable_parameters()} == {id(p) for n, p in teacher.named_parameters() if n in trainable}
    unet = {n for n in trainable if n.startswith("unet.")}
    if policy == "full":
        assert unet and not any(n.startswith(("unet.conv_out", "unet.conv_norm_out")) for n in unet)
        assert any(n.startswith("unet.down_blocks") for n in unet)
    elif policy == "up_blocks":
        assert unet and all(n.startswith("unet.up_blocks") for n in unet)
    else:
        assert not unet
    assert not any(n.startswith("vae.") for n in trainable)
    for part in ("image_adapter.", "text_adapter.", "decoder."):
        assert any(n.startswith(part) for n in trainable), part
    assert not teacher.vae.training  # the frozen VAE stays in eval mode


def test_gradient_checkpointing_switch(images):
    teacher = tiny(gradient_checkpointing=True).train()
    assert teacher.unet.is_gradient_checkpointing
    teacher(images).score.sum().backward()
    assert teacher.unet.up_blocks[0].resnets[0].conv1.weight.grad is not None


# ---------------------------------------------------------------------------------------- persistence
def test_save_load_round_trip_gives_identical_outputs(tmp_path, images):
    teacher = tiny(latent="sample", seed=5)
    stats = teacher.fit_latent_stats(images)
    with torch.no_grad():  # make every part non-default so a missed tensor would show
        for p in teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    teacher.eval()
    teacher.save_pretrained(tmp_path / "t")
    loaded = Teacher.from_pretrained(tmp_path / "t").eval()
    assert loaded.config == teacher.config and loaded.config["latent_stats"] == stats
    with torch.no_grad():
        a, b = teacher(images), loaded(images)
    assert torch.equal(a.score, b.score)
    for name in a.features:
        assert torch.equal(a.features[name], b.features[name]), name


def test_fitted_latent_stats_standardise_latents(images):
    teacher = tiny()
    teacher.fit_latent_stats(images)
    with torch.no_grad():
        z = (teacher.encode_latents(images * 2 - 1) - teacher.latent_shift[:, None, None]) * teacher.latent_scale[:, None, None]
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-3)
    fixed = tiny(latent_stats=[0.5, 2.0])
    assert torch.allclose(fixed.latent_scale, torch.full((4,), 0.5)) and torch.allclose(fixed.latent_shift, torch.full((4,), 0.5))


def test_prompt_embeddings_from_a_file(tmp_path):
    n = len(get_preset("tiny")["qualities"]) * 2 * 3
    emb = torch.randn(n, 32)
    save_prompt_embeddings(tmp_path / "e.safetensors", emb)
    teacher = DPIQATeacher.from_prompts(preset="tiny", prompt_embeddings=str(tmp_path / "e.safetensors"))
    assert torch.equal(teacher.prompt_embeddings, emb)
    assert "prompt_embeddings" not in teacher.config
    assert teacher.config["initialised_from"]["prompts"].startswith("file:")
    torch.save(torch.randn(n + 1, 32), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: prompt embeddings have shape \(31, 32\)"):
        DPIQATeacher.from_prompts(preset="tiny", prompt_embeddings=str(tmp_path / "bad.pt"))


# ---------------------------------------------------------------------------------------- loading from disk
def _tiny_sd_parts(seed: int = 1):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    preset = get_preset("tiny")
    torch.manual_seed(seed)
    return UNet2DConditionModel(**preset["unet"]), AutoencoderKL(**preset["vae"])


def _write_tiny_tokenizer(tok_dir: Path) -> dict[str, int]:
    """CLIP's BPE tokenizer files with a vocabulary built here (no download)."""
    tok_dir.mkdir(parents=True, exist_ok=True)
    symbols = list("abcdefghijklmnopqrstuvwxyz0123456789,_")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols + [s + "</w>" for s in symbols] + ["th", "the</w>"]:
        vocab[s] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\n")
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}))
    return vocab


def _tiny_text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )


def _write_tiny_clip(folder: Path) -> None:
    """A tiny CLIP text encoder + tokenizer in SD's on-disk layout (``text_encoder/``, ``tokenizer/``)."""
    from transformers import CLIPTextModel

    vocab = _write_tiny_tokenizer(folder / "tokenizer")
    torch.manual_seed(2)
    CLIPTextModel(_tiny_text_config(len(vocab))).save_pretrained(folder / "text_encoder")


@pytest.mark.parametrize("kind", ["with_projection", "clip_model"])
def test_projected_clip_features_like_the_official_embeddings(tmp_path, kind):
    """A CLIP folder with a projection gives projected features (official: CLIPModel.get_text_features)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionConfig

    from kdiqa.teachers.dpiqa import encode_prompts

    folder = tmp_path / "clip"
    vocab = _write_tiny_tokenizer(folder)
    torch.manual_seed(3)
    if kind == "with_projection":
        model = CLIPTextModelWithProjection(_tiny_text_config(len(vocab)))
    else:
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                                  image_size=32, patch_size=16, projection_dim=32)
        model = CLIPModel(CLIPConfig(text_config=_tiny_text_config(len(vocab)).to_dict(), vision_config=vision.to_dict(),
                                     projection_dim=32))
    model.eval().save_pretrained(folder)
    prompts = build_prompts(["bad", "good"], ["others"], ["white noise"])
    got = encode_prompts(prompts, folder)
    batch = CLIPTokenizer.from_pretrained(str(folder))(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        if kind == "with_projection":
            expected = model(**batch).text_embeds
        else:
            expected = model.text_projection(model.text_model(**batch).pooler_output)
    assert got.shape == (2, 32) and torch.allclose(got, expected, atol=1e-5)


def test_hub_is_offline_during_a_load(monkeypatch, tmp_path):
    from kdiqa.teachers.dpiqa import loading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = {}

    def fake_load(path):
        seen["offline"] = loading.os.environ.get("HF_HUB_OFFLINE")
        raise CheckpointError("stop")

    monkeypatch.setattr(loading, "_load_diffusers_folder", fake_load)
    with pytest.raises(CheckpointError, match="stop"):
        loading.load_stable_diffusion(tmp_path)
    assert seen == {"offline": "1"} and "HF_HUB_OFFLINE" not in loading.os.environ


def test_diffusers_folder_loads_through_the_user_code_path(tmp_path, images):
    from transformers import CLIPTextModel, CLIPTokenizer

    unet, vae = _tiny_sd_parts()
    sd = tmp_path / "tiny-sd"
    unet.save_pretrained(sd / "unet")
    vae.save_pretrained(sd / "vae")
    _write_tiny_clip(sd)

    teacher = TEACHERS.build("dpiqa", preset="tiny", sd_checkpoint=str(sd))
    assert torch.equal(teacher.unet.conv_in.weight, unet.conv_in.weight)
    assert torch.equal(teacher.vae.encoder.conv_in.weight, vae.encoder.conv_in.weight)
    # prompts encoded once by the checkpoint's text encoder (pooled EOS state of a CLIPTextModel)
    tok = CLIPTokenizer.from_pretrained(str(sd / "tokenizer"))
    clip = CLIPTextModel.from_pretrained(str(sd / "text_encoder")).eval()
    with torch.no_grad():
        expected = clip(**tok(teacher.prompts, padding=True, return_tensors="pt")).pooler_output
    assert teacher.prompt_embeddings.shape == (30, 32)
    assert torch.allclose(teacher.prompt_embeddings, expected, atol=1e-5)
    assert "sd_checkpoint" not in teacher.config and teacher.config["initialised_from"]["sd_checkpoint"] == str(sd)
    assert teacher.config["initialised_from"]["prompts"] == f"text_encoder:{sd}"

    # the saved teacher rebuilds without the SD folder or the text encoder
    teacher.eval()
    teacher.save_pretrained(tmp_path / "saved")
    for path in sorted(sd.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    loaded = Teacher.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        assert torch.equal(teacher(images).score, loaded(images).score)
    assert torch.equal(loaded.prompt_embeddings, teacher.prompt_embeddings)


def _unet_to_ldm(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """diffusers U-Net keys → the original SD (LDM) layout; the inverse of diffusers' own converter."""
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    up_with_attn = {int(m.group(1)) for k in state if (m := re.match(r"up_blocks\.(\d+)\.attentions", k))}

    def res(rest: str) -> str:
        head, _, tail = rest.partition(".")
        return f"{resnet[head]}.{tail}"

    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in fixed:
            new = f"{fixed[module]}.{param}"
        elif m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = f"input_blocks.{1 + i * (layers + 1) + j}." + (f"0.{res(rest)}" if kind == "resnets" else f"1.{rest}")
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"middle_block.{2 * int(m[1])}.{res(m[2])}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = f"output_blocks.{i * (layers + 1) + j}." + (f"0.{res(rest)}" if kind == "resnets" else f"1.{rest}")
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            i = int(m[1])
            new = f"output_blocks.{i * (layers + 1) + layers}.{2 if i in up_with_attn else 1}.{m[2]}"
        else:
            raise AssertionError(f"unmapped U-Net key {key}")
        out["model.diffusion_model." + new] = value
    return out


def _vae_to_ldm(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys → the original SD (``first_stage_model.``) layout."""
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", new):
            new = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                value = value[:, :, None, None]  # LDM's attention projections are 1×1 convolutions
        out["first_stage_model." + new] = value
    return out


def test_single_original_layout_file_loads_through_from_single_file(tmp_path, images):
    from safetensors.torch import save_file

    unet, vae = _tiny_sd_parts(seed=4)
    preset = get_preset("tiny")
    ldm = {**_unet_to_ldm(unet.state_dict(), 1), **_vae_to_ldm(vae.state_dict(), 3)}
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(tmp_path / "tiny-sd.safetensors"))
    # a tiny SD is neither 1.5 nor 2.x, so it brings its own diffusers-layout config folder (sd_config)
    config_dir = tmp_path / "tiny-config"
    for part in ("unet", "vae"):
        (config_dir / part).mkdir(parents=True)
        (config_dir / part / "config.json").write_text(json.dumps(preset[part]))

    teacher = DPIQATeacher.from_stable_diffusion(
        tmp_path / "tiny-sd.safetensors", sd_config=str(config_dir), prompt_embeddings="random", preset="tiny",
    )
    for name, value in unet.state_dict().items():
        assert torch.equal(teacher.unet.state_dict()[name], value), name
    for name, value in vae.state_dict().items():
        assert torch.allclose(teacher.vae.state_dict()[name], value), name
    assert teacher.config["initialised_from"]["family"] == "custom"
    with torch.no_grad():
        assert teacher.eval()(images).score.isfinite().all()


def test_single_file_without_prompt_source_says_what_to_give(tmp_path):
    from safetensors.torch import save_file

    unet, vae = _tiny_sd_parts()
    ldm = {**_unet_to_ldm(unet.state_dict(), 1), **_vae_to_ldm(vae.state_dict(), 3)}
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(tmp_path / "sd.safetensors"))
    config_dir = tmp_path / "cfg"
    for part in ("unet", "vae"):
        (config_dir / part).mkdir(parents=True)
        (config_dir / part / "config.json").write_text(json.dumps(get_preset("tiny")[part]))
    with pytest.raises(CheckpointError, match="prompt_embeddings"):
        DPIQATeacher.from_stable_diffusion(tmp_path / "sd.safetensors", sd_config=str(config_dir), preset="tiny")


@pytest.mark.parametrize("width, family", [(768, "sd15"), (1024, "sd21")])
def test_family_is_detected_from_the_cross_attention_width(width, family):
    assert detect_family({LDM_CROSS_ATTN_KEY: torch.zeros(320, width)}) == family


def test_unknown_single_file_layout_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="sd_config"):
        detect_family({"some.other.key": torch.zeros(1)}, "x.safetensors")


def test_missing_checkpoint_says_what_to_download_and_which_key(tmp_path):
    with pytest.raises(CheckpointError) as err:
        DPIQATeacher.from_stable_diffusion(tmp_path / "stable-diffusion-v1-5")
    message = str(err.value)
    assert "\n" not in message
    assert "Stable Diffusion v1.5 in diffusers format" in message
    assert "teacher.options.sd_checkpoint" in message
    with pytest.raises(CheckpointError, match="2.1"):
        DPIQATeacher.from_stable_diffusion(tmp_path / "sd21", preset="sd21")
