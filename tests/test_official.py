"""The DP-IQA authors' released weights: key maps, parity with the official forward, convert, bad files.

The "official" modules below are written here from the facts of the official code (RomGai/DP-IQA,
``iqa_models/dpiqa.py`` and ``student.py``; see DESIGN.md "Released DP-IQA checkpoints"), not from
kdiqa's modules: their ``state_dict()`` *is* the released layout, and their forward is the reference
kdiqa must reproduce. The SD-1.5-width teacher has the real channel widths (320/640/1280/1280, the
official decoder) with one layer per block, attention only where the image adapter needs it, a small
VAE and 10 prompts, so that it builds, saves and runs in seconds on one CPU thread.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdiqa.cli.main import main
from kdiqa.errors import CheckpointError, ConfigError
from kdiqa.measure import count_parameters
from kdiqa.registry import STUDENTS
from kdiqa.students.base import Student, build_student
from kdiqa.teachers.base import Teacher
from kdiqa.teachers.dpiqa import DPIQATeacher
from kdiqa.teachers.dpiqa.presets import get_preset, packaged_config

pytestmark = pytest.mark.usefixtures("one_thread_module")


# ------------------------------------------------------------------ the official teacher, from the facts
class SELayer(nn.Module):
    def __init__(self, channel: int, reduction: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False), nn.ReLU(),
            nn.Linear(channel // reduction, channel, bias=False), nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class OfficialQFD(nn.Module):
    """conv{k}/se{k} read the k-th argument: QFD(up3, up2, up1, up0) → conv1 sees the last up block."""

    def __init__(self, in_channels, width=512, head=(128, 32, 8), hidden=512, size=64, reduction=16):
        super().__init__()
        self.size, self.n, self.nh = size, len(in_channels), len(head)
        for k, c in enumerate(in_channels, 1):
            setattr(self, f"conv{k}", nn.Conv2d(c, width, 3, padding=1))
            setattr(self, f"se{k}", SELayer(width, reduction))
        self.fuse_conv = nn.Conv2d(width * len(in_channels), width, 3, padding=1)
        self.se_fuse = SELayer(width, reduction)
        self.bnc1 = nn.BatchNorm2d(width)  # built, never used (as in the official code)
        previous = width
        for k, c in enumerate(head, 1):
            setattr(self, f"conv_score{k}", nn.Conv2d(previous, c, 1))
            previous = c
        self.fc1 = nn.Linear(previous * size * size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)
        self.classifier_dist = nn.Linear(hidden, 24)  # built, never used

    def forward(self, *xs):
        levels = []
        for k, x in enumerate(xs, 1):
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)
            levels.append(getattr(self, f"se{k}")(getattr(self, f"conv{k}")(x)))
        m = self.se_fuse(self.fuse_conv(torch.cat(levels, dim=1)))
        for k in range(1, self.nh + 1):
            m = torch.relu(getattr(self, f"conv_score{k}")(m))
        s = torch.relu(self.fc1(m.flatten(1)))
        s = torch.relu(self.fc2(s))
        return self.fc3(s), m


class OfficialTextAdapter(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))


def official_unet_ups(unet, latents, tokens, residuals):
    """The official UNet.forward up to the outputs of the up blocks: integer timestep 1, adapter residuals
    passed into a cross-attention down block (added after its last resnet/attention pair) and added in
    place *after* a down block without cross-attention (so its skip connection, the same tensor, sees it too)."""
    t = torch.ones(latents.shape[0]).long()
    emb = unet.time_embedding(unet.time_proj(t).to(latents.dtype))
    x = unet.conv_in(latents)
    skips = (x,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=tokens, additional_residuals=residuals.pop(0))
        else:
            x, res = block(hidden_states=x, temb=emb)
            x += residuals.pop(0)
        skips += res
    if getattr(unet.mid_block, "has_cross_attention", False):
        x = unet.mid_block(x, emb, encoder_hidden_states=tokens)
    else:
        x = unet.mid_block(x, emb)
    ups = []
    for block in unet.up_blocks:
        res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
        if getattr(block, "has_cross_attention", False):
            x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=tokens)
        else:
            x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res)
        ups.append(x)
    return ups


class OfficialDPIQA(nn.Module):
    def __init__(self, unet_cfg, vae_cfg, adapter_blocks, qfd):
        super().__init__()
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from diffusers.models.adapter import FullAdapter

        dim = unet_cfg["cross_attention_dim"]
        self.vae = AutoencoderKL.from_config(vae_cfg)
        self.unet = UNet2DConditionModel.from_config(unet_cfg)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-4))
        self.text_adapter = OfficialTextAdapter(dim)
        downscale = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        self.img_adapter = FullAdapter(3, list(unet_cfg["block_out_channels"]), adapter_blocks, downscale)
        self.QFD = OfficialQFD(list(unet_cfg["block_out_channels"]), **qfd)

    @torch.no_grad()
    def forward(self, img, embeddings):
        """img in [0, 1], unchanged; the posterior's mode stands in for the official sample."""
        latents = self.vae.encode(img).latent_dist.mode() * self.vae.config.scaling_factor
        texts = embeddings + self.gamma * self.text_adapter.fc(embeddings)
        tokens = texts.unsqueeze(0).repeat(img.shape[0], 1, 1)
        residuals = list(self.img_adapter(img))
        ups = official_unet_ups(self.unet, latents, tokens, residuals)
        score, fmap = self.QFD(*reversed(ups))
        return score.squeeze(1), fmap


def fill_(module: nn.Module, seed: int, pool_size: int = 1 << 24) -> nn.Module:
    """Random weights, fast: every tensor is a slice (at a random offset) of one pool of U(-1, 1) draws,
    scaled like He-uniform for matrices, near 1 for norm weights, small for biases (no per-layer init)."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.rand(pool_size, generator=gen) * 2 - 1
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("num_batches_tracked"):
                p.fill_(7)
                continue
            flat, start = p.view(-1), 0
            offset = int(torch.randint(pool_size, (1,), generator=gen))
            while start < flat.numel():
                take = min(flat.numel() - start, pool_size - offset)
                flat[start:start + take].copy_(pool[offset:offset + take])
                start, offset = start + take, 0
            if name.endswith("running_var"):
                p.mul_(0.5).add_(1.0)
            elif p.ndim >= 2:
                p.mul_(math.sqrt(6.0 / p[0].numel()))
            elif name.endswith("weight"):
                p.mul_(0.2).add_(1.0)
            else:
                p.mul_(0.1)
    return module


def build_official(unet_cfg, vae_cfg, adapter_blocks, qfd, seed=0) -> OfficialDPIQA:
    with torch.device("meta"):
        model = OfficialDPIQA(unet_cfg, vae_cfg, adapter_blocks, qfd)
    model = fill_(model.to_empty(device="cpu"), seed)
    with torch.no_grad():
        model.gamma.uniform_(-0.5, 0.5)  # not the 1e-4 init: the text adapter must matter
    return model.eval()


# SD 1.5 widths, lighter: one layer per block; attention in the down blocks (the image adapter needs it)
# and the last up block; a small VAE (still ×8); 10 prompts
SD_UNET = dict(packaged_config("sd15", "unet"), layers_per_block=1, mid_block_type="UNetMidBlock2D",
               up_block_types=["UpBlock2D", "UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"])
SMALL_VAE = {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1}
SD_VAE = dict(packaged_config("sd15", "vae"), **SMALL_VAE)
SD_OPTIONS = {
    "preset": "sd15",
    "unet": {k: SD_UNET[k] for k in ("layers_per_block", "mid_block_type", "up_block_types")},
    "vae": SMALL_VAE,
    "image_adapter": {"num_res_blocks": 1},
    "scenes": ["others"],
    "distortions": ["jpeg compression", "gaussian blur"],
}
SD_PROMPTS = 5 * 1 * 2

TINY = get_preset("tiny")
TINY_DECODER = TINY["decoder"]
TINY_QFD = {"width": TINY_DECODER["width"], "head": tuple(TINY_DECODER["head_channels"]), "hidden": TINY_DECODER["mlp_hidden"],
            "size": TINY_DECODER["map_size"], "reduction": TINY_DECODER["se_reduction"]}
TINY_PROMPTS = 5 * 2 * 3


def save_embeddings(path, n, dim, seed=1):
    emb = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    torch.save(emb / emb.norm(dim=-1, keepdim=True), path)
    return path


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """An official-layout file at the tiny preset's sizes (fast) and its prompt embeddings."""
    root = tmp_path_factory.mktemp("tiny_official")
    model = build_official(TINY["unet"], TINY["vae"], TINY["image_adapter"]["num_res_blocks"], TINY_QFD)
    torch.save(model.state_dict(), root / "tiny_model_plcc_best.pth")
    save_embeddings(root / "quality_embeddings.pth", TINY_PROMPTS, TINY["unet"]["cross_attention_dim"])
    return {"model": model, "weights": root / "tiny_model_plcc_best.pth", "embeddings": root / "quality_embeddings.pth",
            "root": root}


def tiny_teacher(files, weights=None, **options) -> DPIQATeacher:
    return DPIQATeacher.from_official(weights or files["weights"], preset="tiny",
                                      prompt_embeddings=str(files["embeddings"]), **options).eval()


def expected_homes(levels: int, head_layers: int) -> dict[str, str]:
    """Where each official module must land, written out by hand (not derived from kdiqa's key map)."""
    homes = {"gamma": "text_adapter.gamma", "text_adapter.fc.0": "text_adapter.mlp.0", "text_adapter.fc.2": "text_adapter.mlp.2",
             "QFD.fuse_conv": "decoder.fuse.0", "QFD.se_fuse.fc.0": "decoder.fuse.1.fc.0", "QFD.se_fuse.fc.2": "decoder.fuse.1.fc.2",
             "QFD.fc1": "decoder.mlp.0", "QFD.fc2": "decoder.mlp.2", "QFD.fc3": "decoder.mlp.4",
             "img_adapter.conv_in": "image_adapter.adapter.conv_in"}
    # official conv1 reads the last up block; kdiqa's levels[i] reads up_blocks[i]
    for k in range(1, levels + 1):
        homes[f"QFD.conv{k}"] = f"decoder.levels.{levels - k}.0"
        homes[f"QFD.se{k}.fc.0"] = f"decoder.levels.{levels - k}.1.fc.0"
        homes[f"QFD.se{k}.fc.2"] = f"decoder.levels.{levels - k}.1.fc.2"
    for k in range(1, head_layers + 1):
        homes[f"QFD.conv_score{k}"] = f"decoder.head.{2 * (k - 1)}"
    return homes


def assert_every_key_landed(theirs: dict[str, torch.Tensor], teacher: DPIQATeacher, levels: int, head_layers: int) -> None:
    """``theirs``: the official state dict. Each tensor must be in the kdiqa module the hand-written map names."""
    ours = teacher.state_dict()
    homes = expected_homes(levels, head_layers)
    checked = 0
    for key, value in theirs.items():
        if key.startswith(("QFD.bnc1.", "QFD.classifier_dist.")):
            continue
        if key.startswith(("vae.", "unet.")):
            target = key
        elif key.startswith("img_adapter."):
            target = "image_adapter.adapter." + key[len("img_adapter."):]
        else:
            module, _, leaf = key.rpartition(".")
            target = f"{homes[module]}.{leaf}" if module else homes[key]
        assert torch.equal(ours[target], value), f"{key} did not land in {target}"
        checked += 1
    for module, target in homes.items():  # the hand-written homes hold what the official modules hold
        if module != "gamma":
            assert torch.equal(ours[f"{target}.weight"], theirs[f"{module}.weight"])
    kdiqa_only = {"prompt_embeddings", "latent_shift", "latent_scale"}
    assert checked == len(ours) - len(kdiqa_only)  # every kdiqa tensor came from the file
    assert not any(t.is_meta for t in list(teacher.parameters()) + list(teacher.buffers()))


# ------------------------------------------------------------------ teacher: parity
@pytest.mark.slow
def test_sd15_width_official_file_scores_exactly_like_the_official_forward(tmp_path, capsys):
    official = build_official(SD_UNET, SD_VAE, 1, {})
    path = tmp_path / "koniq_model_plcc_best.pth"
    torch.save(official.state_dict(), path)
    embeddings = save_embeddings(tmp_path / "quality_embeddings.pth", SD_PROMPTS, 768)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))  # one image: the decoder is ~100 GMAC
    score, fmap = official(image, torch.load(embeddings, weights_only=True))
    del official  # the file is the reference from here on: one copy of the weights in memory at a time

    try:
        teacher = DPIQATeacher.from_official(path, prompt_embeddings=str(embeddings), **SD_OPTIONS).eval()
        assert "ignored 7 keys" in capsys.readouterr().err  # bnc1 (5) + classifier_dist (2), said once
        assert teacher.config["input_range"] == "[0,1]" and "official_weights" not in teacher.config
        assert teacher.config["initialised_from"]["official_weights"] == str(path)
        assert_every_key_landed(torch.load(path, weights_only=True, mmap=True), teacher, levels=4, head_layers=3)
        with torch.no_grad():
            out = teacher(image)
    finally:
        path.unlink()  # 2 GB: pytest keeps the last runs' temporary folders
    d_score = (out.score - score).abs().max().item()
    d_map = (out.features["quality_map"] - fmap).abs().max().item()
    print(f"official teacher parity (SD-1.5 widths): max |Δscore| = {d_score:.3g}, max |Δquality_map| = {d_map:.3g}")
    assert out.features["quality_map"].shape == (1, 8, 64, 64)
    assert fmap.abs().max() > 0.1 and score.abs().max() > 0.1  # numbers big enough for 1e-4 to mean something
    assert d_score <= 1e-4 and d_map <= 1e-4


def test_tiny_official_file_parity_and_what_is_kept(tiny_files):
    teacher = tiny_teacher(tiny_files)
    assert_every_key_landed(tiny_files["model"].state_dict(), teacher, levels=2, head_layers=2)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = teacher(images)
        score, fmap = tiny_files["model"](images, torch.load(tiny_files["embeddings"], weights_only=True))
    torch.testing.assert_close(out.score, score, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.features["quality_map"], fmap, rtol=0, atol=1e-5)


def test_latent_sample_is_seeded_and_mean_is_deterministic(tiny_files):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        mean_a, mean_b = (tiny_teacher(tiny_files)(images).score for _ in range(2))
        sample_a = tiny_teacher(tiny_files, latent="sample", seed=3)(images).score
        sample_b = tiny_teacher(tiny_files, latent="sample", seed=3)(images).score
        sample_c = tiny_teacher(tiny_files, latent="sample", seed=4)(images).score
    assert torch.equal(mean_a, mean_b) and torch.equal(sample_a, sample_b)
    assert not torch.equal(sample_a, sample_c) and not torch.equal(sample_a, mean_a)


# ------------------------------------------------------------------ teacher: bad files and options
def _save_variant(files, name, edit):
    state = dict(torch.load(files["weights"], weights_only=True))
    edit(state)
    path = files["root"] / name
    torch.save(state, path)
    return path


def test_missing_and_misshapen_keys_are_named(tiny_files):
    missing = _save_variant(tiny_files, "missing.pth", lambda s: s.pop("QFD.conv2.weight"))
    with pytest.raises(CheckpointError, match=r"missing key 'QFD\.conv2\.weight' \(kdiqa's decoder\.levels\.0\.0\.weight"):
        tiny_teacher(tiny_files, missing)
    bad = _save_variant(tiny_files, "misshapen.pth", lambda s: s.update(gamma=torch.zeros(5)))
    with pytest.raises(CheckpointError, match=r"key gamma has shape \(5,\), kdiqa's text_adapter\.gamma needs \(32,\)"):
        tiny_teacher(tiny_files, bad)
    no_vae = _save_variant(tiny_files, "no_vae.pth", lambda s: [s.pop(k) for k in list(s) if k.startswith("vae.")])
    with pytest.raises(CheckpointError, match=r"missing key 'vae\.encoder\.conv_in\.weight' \(kdiqa's vae\.encoder"):
        tiny_teacher(tiny_files, no_vae)
    extra = _save_variant(tiny_files, "extra.pth", lambda s: s.update({"QFD.conv9.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match=r"unexpected key 'QFD\.conv9\.weight'"):
        tiny_teacher(tiny_files, extra)


def test_bad_files_are_one_line_checkpoint_errors(tiny_files, tmp_path):
    whole = tmp_path / "koniq_model_pack.pth"
    torch.save(nn.Linear(2, 2), whole)
    with pytest.raises(CheckpointError, match=r"pickled Python object \(torch\.nn\.modules\.linear\.Linear\).*state_dict"):
        tiny_teacher(tiny_files, whole)
    data = tiny_files["weights"].read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        tiny_teacher(tiny_files, truncated)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(2, 4)}, other)
    with pytest.raises(CheckpointError, match="not the released DP-IQA teacher.*conv1.weight"):
        tiny_teacher(tiny_files, other)
    student = tmp_path / "koniq_student_model_plcc_best.pth"
    torch.save({"base_model.features.0.0.weight": torch.zeros(1), "conv_transpose.weight": torch.zeros(1)}, student)
    with pytest.raises(CheckpointError, match="this is the released DP-IQA student.*dpiqa-official-student"):
        tiny_teacher(tiny_files, student)
    with pytest.raises(CheckpointError, match="file not found"):
        tiny_teacher(tiny_files, tmp_path / "nope.pth")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="a safetensors file.*teacher.checkpoint"):
        tiny_teacher(tiny_files, tmp_path / "model.safetensors")


def test_official_weights_need_prompts_and_exclude_sd_checkpoint(tiny_files):
    with pytest.raises(CheckpointError, match="holds no prompt embeddings.*quality_embeddings.pth"):
        DPIQATeacher.from_official(tiny_files["weights"], preset="tiny")
    with pytest.raises(ConfigError, match="official_weights or sd_checkpoint"):
        DPIQATeacher.from_options(official_weights=str(tiny_files["weights"]), sd_checkpoint="/x", prompt_embeddings="random")
    with pytest.warns(UserWarning, match=r"trained on images in \[0, 1\]"):
        tiny_teacher(tiny_files, input_range="[-1,1]")


# ------------------------------------------------------------------ convert (teacher)
def test_convert_teacher_then_load_predict_and_recipe_checkpoint(tiny_files, tmp_path, capsys):
    out = tmp_path / "dpiqa-tiny"
    extra = ["--preset", "tiny"]
    assert main(["convert", "dpiqa-official", str(tiny_files["weights"]), "--prompt-embeddings",
                 str(tiny_files["embeddings"]), "-o", str(out), *extra]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not list(tmp_path.glob(".dpiqa-tiny*"))  # the temporary folder is gone
    config = json.loads((out / "config.json").read_text())
    assert config["teacher"] == "dpiqa" and config["config"]["input_range"] == "[0,1]"
    assert "official_weights" not in config["config"] and "prompt_embeddings" not in config["config"]

    teacher = Teacher.from_pretrained(out)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got = teacher(images)
        score, fmap = tiny_files["model"](images, torch.load(tiny_files["embeddings"], weights_only=True))
    torch.testing.assert_close(got.score, score, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.features["quality_map"], fmap, rtol=0, atol=1e-5)

    # an existing folder is kept unless --force
    capsys.readouterr()
    assert main(["convert", "dpiqa-official", str(tiny_files["weights"]), "--prompt-embeddings",
                 str(tiny_files["embeddings"]), "-o", str(out), *extra]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", "dpiqa-official", str(tiny_files["weights"]), "--prompt-embeddings",
                 str(tiny_files["embeddings"]), "-o", str(out), "--force", *extra]) == 0

    # predict reads the folder: no pickle, no SD checkpoint
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray((torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(i)).numpy() * 255).astype("uint8")).save(folder / f"{i}.png")
    capsys.readouterr()
    assert main(["predict", str(folder), "--model", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "path,score,error" and len(lines) == 3


def test_convert_errors_are_one_line_exit_2(tiny_files, tmp_path, capsys):
    student = tmp_path / "s.pth"
    torch.save({"base_model.features.0.0.weight": torch.zeros(1), "conv_transpose.weight": torch.zeros(1)}, student)
    whole = tmp_path / "pack.pth"
    torch.save(nn.Linear(2, 2), whole)
    cases = [
        (["dpiqa-official", str(student), "--prompt-embeddings", str(tiny_files["embeddings"])], "released DP-IQA student"),
        (["dpiqa-official", str(tiny_files["weights"])], "--prompt-embeddings"),
        (["dpiqa-official", str(whole), "--prompt-embeddings", str(tiny_files["embeddings"])], "pickled Python object"),
        (["dpiqa-official-student", str(tiny_files["weights"])], "released DP-IQA teacher"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["convert", *args, "-o", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("kdiqa: error:") and message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the official student, from the facts
class OfficialStudent(nn.Module):
    """torchvision EfficientNet (avgpool, classifier → Identity), viewed back to C×h×w, ConvTranspose + ReLU,
    nearest 64², flatten, fc1 ReLU fc2 ReLU fc3. ``variant`` b0 stands in for b7 to stay fast."""

    def __init__(self, variant: str = "efficientnet_b7"):
        super().__init__()
        import torchvision

        self.base_model = getattr(torchvision.models, variant)(weights=None)
        channels = self.base_model.classifier[1].in_features
        self.channels = channels
        self.base_model.classifier = nn.Identity()
        self.base_model.avgpool = nn.Identity()
        self.conv_transpose = nn.ConvTranspose2d(channels, 8, kernel_size=3, stride=2, padding=1, output_padding=1)
        self.fc1 = nn.Linear(8 * 64 * 64, 512)
        self.fc2 = nn.Linear(512, 512)
        self.fc3 = nn.Linear(512, 1)

    def forward(self, x):
        h, w = x.shape[-2] // 32, x.shape[-1] // 32  # 16×16 at the official 512²
        x = self.base_model(x).view(x.shape[0], self.channels, h, w)
        x = torch.relu(self.conv_transpose(x))
        fmap = F.interpolate(x, size=(64, 64), mode="nearest")
        x = torch.relu(self.fc1(fmap.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x), fmap


@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    torch.manual_seed(0)
    model = OfficialStudent("efficientnet_b0").eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so the buffers matter
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("official_student") / "koniq_student_model_plcc_best.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_official_student_key_layout_at_b7_matches_torchvision():
    """The default (B7) student has exactly the released file's keys and shapes (built weightless)."""
    from kdiqa.students.official import official_student_keys

    with torch.device("meta"):
        reference = OfficialStudent("efficientnet_b7")
        student = STUDENTS.build("dpiqa_official")
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert official_student_keys(student) == theirs
    assert student.tap_shapes == [(2560, 16, 16)] and student.config["image_size"] == 512
    assert student.feature_shapes() == {"quality_map": (8, 64, 64)}


def test_official_student_parity(student_file, capsys):
    reference, path = student_file
    student = STUDENTS.build("dpiqa_official", backbone="efficientnet_b0", image_size=64, weights=str(path)).eval()
    assert "weights" not in student.config and student.config["initialised_from"] == str(path)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = student(x)
        score, fmap = reference(x)
    d_score = (out["score"] - score.squeeze(1)).abs().max().item()
    d_map = (out["features"]["quality_map"] - fmap).abs().max().item()
    print(f"official student parity (efficientnet_b0 variant): max |Δscore| = {d_score:.3g}, max |Δquality_map| = {d_map:.3g}")
    assert fmap.abs().max() > 0.01 and out["dist"] is None and len(out["taps"]) == 1
    assert d_score <= 1e-4 and d_map <= 1e-4


@pytest.mark.slow
def test_official_student_converts_saves_loads_predicts_and_exports(student_file, tmp_path, capsys):
    reference, path = student_file
    out = tmp_path / "student"
    assert main(["convert", "dpiqa-official-student", str(path), "-o", str(out), "--backbone", "efficientnet_b0",
                 "--image-size", "64"]) == 0
    student = Student.from_pretrained(out)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(student(x)["score"], reference(x)[0].squeeze(1), rtol=0, atol=1e-4)
    pytest.importorskip("onnxruntime")
    from kdiqa.export import export_student

    meta = export_student(out, "onnx")
    assert meta["parity"]["checked"] and meta["parity"]["max_abs_diff"] <= 1e-4
    assert meta["input"]["mean"] == [0.0, 0.0, 0.0] and meta["input"]["std"] == [1.0, 1.0, 1.0]  # no normalisation


def test_official_student_options_are_checked(student_file):
    _, path = student_file
    with pytest.raises(ConfigError, match="torchvision EfficientNet"):
        STUDENTS.build("dpiqa_official", backbone="resnet18")
    with pytest.raises(ConfigError, match="official_mlp"):
        STUDENTS.build("dpiqa_official", backbone="efficientnet_b0", head="pooled_mlp")
    with pytest.raises(CheckpointError, match=r"missing key 'base_model\.features\.1\.1\.block"):
        STUDENTS.build("dpiqa_official", backbone="efficientnet_b1", weights=str(path))  # b1: b0's widths, deeper
    with pytest.raises(CheckpointError, match=r"key fc1\.weight has shape \(512, 32768\), kdiqa's head\.mlp\.2\.weight needs"):
        STUDENTS.build("dpiqa_official", backbone="efficientnet_b0", weights=str(path),
                       projectors=[{"target": "quality_map", "shape": [8, 32, 32], "kind": "official"}])


@pytest.mark.slow
def test_official_student_distils_evaluates_predicts_and_benches(toy_recipe, tmp_path, capsys):
    """dpiqa_official wherever a student goes: built by the distill stage from the cache's shapes, saved,
    evaluated, predicted with, and timed by bench (as itself, at its default B7)."""
    from kdiqa.bench import run_bench
    from kdiqa.config import load_recipe
    from kdiqa.registry import TEACHERS
    from kdiqa.run import prepare_run
    from kdiqa.stages import stage_cache, stage_distill, stage_eval
    from kdiqa.stages.distill import KD

    recipe = load_recipe(toy_recipe, [
        "student.name=dpiqa_official", "student.options.backbone=efficientnet_b0",
        "distill.features=[{target: quality_map, tap: -1, kind: official, loss: mse, weight: 1.0}]",
        "distill.teacher_score=[]", "cache.views_per_image=1", "cache.batch_size=16", "trainer.max_epochs=1", "views.size=32",
    ])
    run = prepare_run(recipe)
    torch.manual_seed(0)
    TEACHERS.build("toy").save_pretrained(run.teacher)
    stage_cache(recipe, run)
    summary = stage_distill(recipe, run)
    assert "test" in summary
    folder = run.student(KD)
    config = json.loads((folder / "config.json").read_text())
    assert config["student"] == "dpiqa_official" and config["config"]["projectors"][0]["shape"] == [4, 16, 16]
    assert set(stage_eval(recipe, run, checkpoint=folder)) == {"train", "val", "test"}
    capsys.readouterr()
    assert main(["predict", str(run.root.parent / "blur" / "imgs" / "000.png"), "--model", str(folder)]) == 0
    assert capsys.readouterr().out.count("\n") == 2
    rows = run_bench(recipe, run, ["dpiqa_official"], teacher="none", repeats=1, warmup=0, batch=1, say=lambda _: None)
    assert rows[0].model == "dpiqa_official" and rows[0].params == count_parameters(STUDENTS.build("dpiqa_official", image_size=32))


def test_official_distill_recipes_take_the_official_student():
    from kdiqa.config import load_recipe

    recipe = load_recipe("distill/koniq10k.yaml", ["data.root=/d", "teacher.checkpoint=/t", "student.name=dpiqa_official"])
    with torch.device("meta"):
        student = build_student(recipe.student, recipe.views.size, recipe.distill.features, {"quality_map": (8, 64, 64)})
    assert student.name == "dpiqa_official" and student.config["backbone"] == "efficientnet_b7"
    assert student.config["image_size"] == 512 and student.tap_shapes == [(2560, 16, 16)]


def test_official_teacher_loads_weightless_then_takes_the_file_tensors(tiny_files):
    """No second copy: the loaded parameters are the file's (memory-mapped) tensors themselves."""
    from kdiqa.teachers.dpiqa.official import load_official_teacher, read_official_teacher

    state = read_official_teacher(tiny_files["weights"])
    with torch.device("meta"):
        teacher = DPIQATeacher.from_prompts(preset="tiny", prompt_embeddings="random")
    load_official_teacher(teacher, state, tiny_files["weights"])
    assert teacher.decoder.fuse[0].weight.data_ptr() == state["QFD.fuse_conv.weight"].data_ptr()
    assert teacher.unet.conv_in.weight.data_ptr() == state["unet.conv_in.weight"].data_ptr()


@pytest.mark.parametrize("dataset", ["koniq10k", "livec", "spaq"])
def test_released_recipes_distil_light_students_from_the_converted_teacher(dataset):
    from kdiqa.config import load_recipe

    for backbone in ("efficientnet_b0", "mobilenetv3_large_100"):
        recipe = load_recipe(f"dpiqa/released_{dataset}.yaml", ["data.root=/d", "teacher.checkpoint=/t", f"student.options.backbone={backbone}"])
        assert recipe.data.name == dataset and recipe.views.size == 512 and recipe.stages[-3:] == ["cache", "distill", "report"]
        assert [(p.target, p.kind) for p in recipe.distill.features] == [("quality_map", "official")]
        assert recipe.name == f"dpiqa-released-{dataset}-{backbone}"
    with torch.device("meta"):
        student = build_student(recipe.student, recipe.views.size, recipe.distill.features, {"quality_map": (8, 64, 64)})
    assert student.feature_shapes() == {"quality_map": (8, 64, 64)}


def test_load_teacher_reads_weights_once_bit_exact_and_rejects_a_truncated_file(tiny_files, tmp_path):
    teacher = tiny_teacher(tiny_files)
    folder = teacher.save_pretrained(tmp_path / "t")
    loaded = Teacher.from_pretrained(folder).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(loaded(images).score, teacher(images).score)
    assert all(p.data_ptr() % 64 == 0 for p in loaded.parameters())  # own aligned memory, no file mapping
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read weights \(EOFError"):
        Teacher.from_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="bad header length"):
        Teacher.from_pretrained(folder)
