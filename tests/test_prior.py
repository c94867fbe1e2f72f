"""The tiny teacher's diffusion prior: pretrained without labels, saved and loaded as an SD checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from kdiqa.config import load_recipe
from kdiqa.config.loader import PACKAGE_ROOT
from kdiqa.errors import CheckpointError
from kdiqa.teachers.dpiqa import DPIQATeacher, get_preset
from kdiqa.teachers.dpiqa.prior import pretrain_prior, save_prior

PACKAGED = "teachers/dpiqa/weights/tiny-mini"


def test_pretraining_lowers_both_losses_and_saves_a_folder_the_teacher_loads(tmp_path):
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    vae, unet, log = pretrain_prior(images, vae_steps=12, unet_steps=12, batch_size=8, progress=False)
    assert log["vae_loss_first_last"][1] < log["vae_loss_first_last"][0]
    assert len(log["latent_mean"]) == len(log["latent_std"]) == 4
    assert not any(p.requires_grad for p in [*vae.parameters(), *unet.parameters()])

    out = save_prior(vae, unet, tmp_path / "prior", {"what": "test"})
    assert json.loads((out / "prior.json").read_text()) == {"what": "test"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior"]  # nothing left beside it
    teacher = DPIQATeacher.from_stable_diffusion(out, prompt_embeddings="random", preset="tiny")
    assert torch.equal(teacher.unet.conv_in.weight, unet.conv_in.weight)
    assert torch.equal(teacher.vae.encoder.conv_in.weight, vae.encoder.conv_in.weight)
    assert teacher(torch.rand(2, 3, 64, 64)).score.shape == (2,)


def test_the_packaged_prior_is_the_tiny_architecture_and_loads_from_any_directory(tmp_path, monkeypatch):
    assert (PACKAGE_ROOT / PACKAGED / "prior.json").is_file(), "run: python -m kdiqa.teachers.dpiqa.prior --out " + PACKAGED
    monkeypatch.chdir(tmp_path)  # a relative path that only exists under the installation
    teacher = DPIQATeacher.from_stable_diffusion(PACKAGED, prompt_embeddings="random", preset="tiny")
    tiny = get_preset("tiny")
    for part in ("unet", "vae"):
        config = teacher.config[part]
        assert {k: config[k] for k in tiny[part]} == {k: (v if not isinstance(v, list) else list(v)) for k, v in tiny[part].items()}
    provenance = json.loads((PACKAGE_ROOT / PACKAGED / "prior.json").read_text())
    assert provenance["source"]["data"]["split"] == "train" and "teachers.dpiqa.prior" in provenance["command"]
    with pytest.raises(CheckpointError, match="not found"):
        DPIQATeacher.from_stable_diffusion("teachers/dpiqa/weights/no-such-prior", preset="tiny")


def test_the_tiny_recipes_use_the_packaged_prior():
    recipe = load_recipe("dpiqa/tiny")
    assert recipe.teacher.options["sd_checkpoint"] == PACKAGED
    assert load_recipe("quickstart").teacher.options["sd_checkpoint"] == PACKAGED
