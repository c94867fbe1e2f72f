"""TANet teacher: official layer sizes and key mapping, batch independence, the official batch mixing,
distribution labels in fitting, the recipes, and a tiny aesthetics run end to end (AVA and TAD66K)."""
import csv
import json
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from kdiqa.cli.main import main
from kdiqa.config import load_recipe
from kdiqa.config.schema import FitConfig, LossTerm
from kdiqa.errors import CheckpointError, ConfigError
from kdiqa.fit import MOSFitModule
from kdiqa.measure import predicted_score
from kdiqa.registry import TEACHERS
from kdiqa.students.base import Student
from kdiqa.teachers.base import Teacher, TeacherOutput
from kdiqa.teachers.tanet import TANetTeacher, official_key
from kdiqa.teachers.tanet.model import pool_to_bins

# --------------------------------------------------------------------------------------------------
# the official layout, written out here independently of the package: what the released state dicts hold


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU6) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + ([act(inplace=True)] if act else [])


class _OfficialResidual(nn.Module):
    """NIMA-pytorch's inverted residual: one flat Sequential, expansion conv even when t = 1."""

    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = cin * t
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            *_conv_bn(cin, hidden, 1), *_conv_bn(hidden, hidden, 3, stride, hidden), *_conv_bn(hidden, cout, 1, act=None)
        )

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


def _official_mobilenet_features() -> nn.Sequential:
    blocks: list[nn.Module] = [nn.Sequential(*_conv_bn(3, 32, 3, 2, act=nn.ReLU))]
    cin = 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            blocks.append(_OfficialResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    blocks.append(nn.Sequential(*_conv_bn(cin, 1280, 1, act=nn.ReLU)))
    return nn.Sequential(*blocks)


def _official_tanet_state(task: str) -> dict[str, torch.Tensor]:
    """A state dict with the released checkpoints' names and shapes, random values."""
    model = nn.Module()
    model.res365_last = torchvision.models.resnet18(num_classes=365)
    model.hypernet = nn.Module()
    model.hypernet.last_out_w, model.hypernet.last_out_b = nn.Linear(365, 100), nn.Linear(365, 1)
    model.tygertnet = nn.Module()
    model.tygertnet.fc1, model.tygertnet.bn1 = nn.Linear(365, 100), nn.BatchNorm1d(100)
    model.tygertnet.relu1, model.tygertnet.relu7 = nn.PReLU(), nn.PReLU()
    model.mobileNet = nn.Module()
    model.mobileNet.base_model = nn.Sequential(_official_mobilenet_features(), nn.AvgPool2d(7))
    model.mobileNet.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.75), nn.Linear(1280, 10))
    model.head_rgb = nn.Sequential(nn.ReLU(), nn.Dropout(0.75), nn.Linear(20736, 10), nn.Softmax(dim=1))
    model.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.75), nn.Linear(30, 10 if task == "ava" else 1))
    gen = torch.Generator().manual_seed(0)
    return {k: (torch.rand(v.shape, generator=gen) + 0.5 if v.is_floating_point() else v) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# architecture


def test_official_preset_has_the_paper_layer_sizes():
    torch.manual_seed(0)
    model = TANetTeacher(task="ava", preset="official").eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["theme.backbone.fc.weight"] == (365, 512)
    assert shapes["theme.hyper_weight.weight"] == (100, 365) and shapes["theme.hyper_bias.weight"] == (1, 365)
    assert shapes["theme.target_fc.weight"] == (100, 365) and shapes["theme.target_bn.running_mean"] == (100,)
    assert shapes["rgb_head.fc.weight"] == (10, 20736)
    assert shapes["aesthetic_head.fc.weight"] == (10, 1280)
    assert shapes["fusion_head.fc.weight"] == (10, 30)
    assert isinstance(model.theme.target_drop, nn.Dropout) and model.theme.target_drop.p == 0.5
    assert model.rgb_head.drop.p == model.fusion_head.drop.p == 0.75
    # ResNet-18: 11.7M with 1000 classes, 11.36M with 365; MobileNetV2 features + the official first expansion
    assert sum(p.numel() for p in model.theme.backbone.parameters()) == 11_363_757
    assert sum(p.numel() for p in model.aesthetic.parameters()) == 2_224_960

    out = model(torch.rand(2, 3, 224, 224))
    assert out.dist.shape == (2, 10) and torch.allclose(out.dist.sum(1), torch.ones(2))
    assert out.features["fusion"].shape == (2, 30) and out.features["aesthetic_map"].shape == (2, 1280, 7, 7)
    # AVA score: the distribution's mean on 1..10, as (mean - 1) / 9
    mean = (out.dist * torch.arange(1, 11)).sum(1)
    torch.testing.assert_close(out.score, (mean - 1) / 9)
    assert model.feature_shapes(64)["aesthetic_map"] == (1280, 2, 2)

    tad = TANetTeacher(task="tad66k", preset="tiny").eval()
    assert tad.fusion_head.fc.weight.shape == (1, 30)
    out = tad(torch.rand(3, 3, 32, 32))
    assert out.dist is None and out.score.shape == (3,) and bool(((out.score > 0) & (out.score < 1)).all())


def test_released_checkpoint_names_map_onto_every_parameter(tmp_path):
    state = _official_tanet_state("ava")
    assert official_key("mobileNet.base_model.0.1.conv.3.weight") == "aesthetic.1.conv.1.0.weight"
    assert official_key("tygertnet.relu7.weight") == "theme.out_act.weight"
    path = tmp_path / "SRCC_758_LCC_765.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # as saved from DataParallel

    model = TANetTeacher.from_official(path, task="ava", preset="official").eval()
    ours = model.state_dict()
    for key, value in state.items():
        assert torch.equal(ours[official_key(key)], value), key
    assert len(state) == len(ours)  # a bijection: nothing left unset
    assert "checkpoint" not in model.config and model.config["initialised_from"] == {"checkpoint": str(path)}

    # the TAD66K checkpoint into an AVA model: one line naming the key and the fix
    tad_path = tmp_path / "SRCC_513_LCC_531_MSE_016.pth"
    torch.save(_official_tanet_state("tad66k"), tad_path)
    with pytest.raises(CheckpointError, match=r"fusion_head\.fc\.weight.*\(1, 30\).*task: tad66k") as err:
        TANetTeacher.from_official(tad_path, task="ava", preset="official")
    assert len(str(err.value).splitlines()) == 1


def test_aesthetic_branch_computes_what_the_official_mobilenet_computes(tmp_path):
    """Same numbers, not just same names: ReLU vs ReLU6 and the first block's expansion matter."""
    torch.manual_seed(0)
    reference = _official_mobilenet_features().eval()
    with torch.no_grad():  # large activations, so a ReLU6 where the official has ReLU would show
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.0)
                m.weight.uniform_(1.0, 3.0)
    path = tmp_path / "mobilenetv2.pth.tar"
    torch.save({"state_dict": {f"features.{k}": v for k, v in reference.state_dict().items()}}, path)
    model = TANetTeacher.from_parts(mobilenet_weights=str(path), task="tad66k", preset="official").eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model.aesthetic(x), expected, rtol=1e-4, atol=1e-4)
        assert expected.max() > 6  # the test would not tell ReLU from ReLU6 otherwise


def test_places365_weights_load_and_a_saved_teacher_needs_no_weight_files(tmp_path):
    torch.manual_seed(0)
    places = torchvision.models.resnet18(num_classes=365)
    # the 2017 release: under "state_dict", DataParallel names, no BatchNorm counters
    state = {f"module.{k}": v for k, v in places.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18_places365.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet18", "state_dict": state}, path)
    teacher = TANetTeacher.from_parts(theme_weights=str(path), task="ava", preset="official").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(teacher.theme.backbone(x), places.eval()(x))
        before = teacher(x)
    teacher.save_pretrained(tmp_path / "saved")
    path.unlink()
    again = Teacher.from_pretrained(tmp_path / "saved").eval()
    assert again.config["initialised_from"] == {"theme_weights": str(path)}
    with torch.no_grad():
        torch.testing.assert_close(again(x).dist, before.dist)

    with pytest.raises(CheckpointError, match="not found"):
        TANetTeacher.from_parts(theme_weights=str(tmp_path / "nope.pth.tar"), preset="tiny")


def test_info_describes_the_presets(capsys):
    assert main(["info", "teacher", "tanet", "--preset", "tiny"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["rgb"] == 20736 * 10 + 10 and counts["fusion"] == 30 * 10 + 10
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total") < 1_000_000


def test_bad_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="tanet task: 'koniq'"):
        TEACHERS.build("tanet", task="koniq")
    with pytest.raises(ConfigError, match="batch_mode"):
        TEACHERS.build("tanet", batch_mode="mixed")


# --------------------------------------------------------------------------------------------------
# batches


@pytest.mark.parametrize("task", ["ava", "tad66k"])
def test_default_gives_an_image_the_same_output_alone_and_in_any_batch(task):
    torch.manual_seed(0)
    model = TANetTeacher(task=task, preset="tiny").eval()
    images = torch.rand(13, 3, 32, 32)
    with torch.no_grad():
        alone = model(images[:1])
        # where image 0 sits: first of 3, of 7, of 13 (crossing the 10 bins), last of 13 reversed
        for batch, row in ((images[:3], 0), (images[:7], 0), (images, 0), (images.flip(0), 12)):
            out = model(batch)
            torch.testing.assert_close(out.score[row], alone.score[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.features["fusion"][row], alone.features["fusion"][0], rtol=1e-5, atol=1e-5)
            if task == "ava":
                torch.testing.assert_close(out.dist[row], alone.dist[0], rtol=1e-5, atol=1e-5)


def _theme_parts(model: TANetTeacher, images: torch.Tensor):
    x = (images - model.mean) / model.std
    return model.theme.generated_layer(model.theme.backbone(x))


def test_official_mode_reproduces_the_batch_mixing():
    torch.manual_seed(0)
    per_sample = TANetTeacher(task="tad66k", preset="tiny").eval()
    official = TANetTeacher(task="tad66k", preset="tiny", batch_mode="official").eval()
    official.load_state_dict(per_sample.state_dict())  # the same parameters serve both modes
    images = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        q, weight, bias = _theme_parts(official, images)
        mixed = q @ weight.T + bias  # (B, B): image i under every image's generated layer
        # the released TAD66K code: softmax across the batch, AdaptiveAvgPool2d((10, 1)) on (B, B, 1)
        expected = nn.AdaptiveAvgPool2d((10, 1))(torch.softmax(mixed, dim=1).unsqueeze(2)).squeeze(2)
        torch.testing.assert_close(official(images).features["theme"], expected)
        # an image's theme features depend on its batch companions...
        other = torch.cat([images[:1], torch.rand(5, 3, 32, 32)])
        assert not torch.allclose(official(other).features["theme"][0], official(images).features["theme"][0])
        # ...while the default uses the diagonal only: each image under its own generated layer
        diagonal = torch.sigmoid(torch.diagonal(mixed)).unsqueeze(1)
        torch.testing.assert_close(per_sample(images).features["theme"], diagonal.expand(-1, 10))

    ava = TANetTeacher(task="ava", preset="tiny", batch_mode="official").eval()
    with torch.no_grad():
        q, weight, bias = _theme_parts(ava, images)
        fresh_bn = nn.BatchNorm1d(len(images))  # the released AVA code builds one per forward, in train mode
        expected = pool_to_bins(ava.theme.out_act(fresh_bn(q @ weight.T + bias)))
        torch.testing.assert_close(ava(images).features["theme"], expected)
        with pytest.raises(ConfigError, match="at least 2 images per batch"):
            ava(images[:1])


def test_theme_backbone_stays_frozen_while_the_rest_trains():
    torch.manual_seed(0)
    model = TANetTeacher(task="ava", preset="tiny").train()
    frozen = {k: v.clone() for k, v in model.theme.backbone.state_dict().items()}
    hyper = model.theme.hyper_weight.weight.clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(torch.rand(4, 3, 32, 32))
    out.dist[:, -1].sum().backward()
    optimizer.step()
    assert not model.theme.backbone.training
    assert all(torch.equal(v, model.theme.backbone.state_dict()[k]) for k, v in frozen.items())  # BN stats too
    assert not torch.equal(hyper, model.theme.hyper_weight.weight)


# --------------------------------------------------------------------------------------------------
# fitting on label distributions


class _FixedDist(nn.Module):
    def __init__(self, dist: torch.Tensor):
        super().__init__()
        self.dist = dist
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, images):
        return TeacherOutput(score=torch.zeros(len(images)) + self.w, dist=self.dist)


def test_fit_loss_on_the_distribution_is_nima_emd():
    pred = torch.tensor([[0.0] * 4 + [1.0] + [0.0] * 5, [0.1] * 10])
    label = torch.tensor([[0.0] * 5 + [1.0] + [0.0] * 4, [0.0] * 9 + [1.0]])
    # CDF differences: one bin of 1 → sqrt(1/10); 0.1, 0.2, ..., 0.9, 0 → sqrt(sum(k²)/100/10)
    by_hand = (math.sqrt(1 / 10) + math.sqrt(sum(k * k for k in range(1, 10)) / 100 / 10)) / 2
    fit = FitConfig(losses=[LossTerm(name="emd", output="dist", options={"r": 2}), LossTerm(name="mse", weight=0.5)])
    module = MOSFitModule(_FixedDist(pred), fit)
    batch = {"image": torch.zeros(2, 3, 4, 4), "mos": torch.tensor([0.5, 0.5]), "dist": label}
    out = module(batch["image"])
    total, parts = module.label_loss(predicted_score(out), batch["mos"], *module._dists(out, batch))
    assert parts["dist/emd"].item() == pytest.approx(by_hand)
    assert total.item() == pytest.approx(by_hand + 0.5 * 0.25)

    with pytest.raises(ConfigError, match="label distributions"):
        module._dists(out, {k: v for k, v in batch.items() if k != "dist"})


# --------------------------------------------------------------------------------------------------
# recipes


def test_recipes_load_with_the_official_settings():
    tad = load_recipe("recipes/tanet/tad66k.yaml", ["data.root=/d", "teacher.options.theme_weights=/w.pth.tar"])
    assert tad.data.batch_size == 40 and tad.teacher.options["task"] == "tad66k"
    assert tad.views.size == 224 and tad.views.train_scale == [0.875**2, 0.875**2] and tad.views.flip
    assert tad.teacher.fit.optim.name == "adam" and [t.name for t in tad.teacher.fit.losses] == ["mse"]
    ava = load_recipe("recipes/tanet/ava.yaml", ["data.root=/d", "teacher.options.theme_weights=/w.pth.tar"])
    assert [(t.name, t.output, t.options["r"]) for t in ava.teacher.fit.losses] == [("emd", "dist", 2)]
    for name in ("distill_ava", "distill_tad66k"):
        recipe = load_recipe(f"recipes/tanet/{name}.yaml", ["data.root=/d", "teacher.checkpoint=/t"])
        assert recipe.student.options["head"] == "dist" and recipe.distill.source == "cache"
    assert [t.name for t in load_recipe("recipes/tanet/distill_ava.yaml", ["data.root=/d", "teacher.checkpoint=/t"]).distill.dist] == ["emd"]
    with pytest.raises(ConfigError, match="theme_weights"):
        load_recipe("recipes/tanet/ava.yaml", ["data.root=/d"])
    with pytest.raises(ConfigError, match=r"distill\.fit\.losses\[0\]\.output"):
        load_recipe("recipes/tanet/distill_ava.yaml", ["data.root=/d", "teacher.checkpoint=/t", "distill.fit.losses=[{name: emd, output: dist}]"])
    with pytest.raises(ConfigError, match=r"losses\[0\]\.output: 'mean'"):
        load_recipe("recipes/tanet/ava.yaml", ["data.root=/d", "teacher.options.theme_weights=/w", "teacher.fit.losses=[{name: mse, output: mean}]"])


# --------------------------------------------------------------------------------------------------
# a tiny aesthetics run end to end, in the AVA and TAD66K release formats


def _image(rng: np.random.Generator, quality: float, size: int = 40) -> Image.Image:
    """Brighter and more colourful = better: a label the tiny model can pick up."""
    base = rng.uniform(0, 1, 3) * (0.3 + 0.7 * quality)
    pixels = np.clip(base + rng.normal(0, 0.08, (size, size, 3)), 0, 1)
    return Image.fromarray((pixels * 255).astype(np.uint8))


def make_ava(root, n: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(n):
        quality = rng.uniform()
        _image(rng, quality).save(root / "images" / f"{1000 + i}.jpg", quality=95)
        votes = np.bincount(np.clip(np.round(rng.normal(2 + 7 * quality, 1.2, 60)), 1, 10).astype(int) - 1, minlength=10)
        lines.append(" ".join(map(str, [i + 1, 1000 + i, *votes, 0, 0, 100 + i % 3])))
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    return root


def make_tad66k(root, n: int = 32, seed: int = 1):
    rng = np.random.default_rng(seed)
    for folder in ("imgs", "merge", "unmerge"):
        (root / folder).mkdir(parents=True)
    rows = {"train": [], "test": []}
    for i in range(n):
        quality = rng.uniform()
        _image(rng, quality).save(root / "imgs" / f"{i}.jpg", quality=95)
        rows["train" if i < 0.75 * n else "test"].append((f"{i}.jpg", f"{10 * quality:.3f}"))
    for split, items in rows.items():
        with open(root / "merge" / f"{split}.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([("image", "score"), *items])
    for theme in ("animal", "plant"):
        with open(root / "unmerge" / f"{theme}.csv", "w", newline="") as handle:
            picked = [r for s in rows.values() for r in s if (int(r[0].split(".")[0]) % 2 == 0) == (theme == "animal")]
            csv.writer(handle).writerows([("image", "score"), *picked])
    return root


def _tiny(root, out) -> list[str]:
    return [
        f"data.root={root}", f"out={out}", "data.num_workers=0", "data.batch_size=8", "data.eval_batch_size=16",
        "data.split.ratios=[0.6,0.2,0.2]", "views.size=32", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "trainer.devices=1", "trainer.progress_bar=false", "trainer.log_every_n_steps=1",
    ]


def _logged(run_dir, name: str) -> set[str]:
    with open(run_dir / "logs" / name / "metrics.csv") as handle:
        return {k for row in csv.DictReader(handle) for k, v in row.items() if v}


@pytest.mark.parametrize("name", ["ava", "tad66k"])
def test_tiny_aesthetics_runs_end_to_end(tmp_path, name):
    """Fit a tiny TANet on AVA votes or TAD66K scores, cache it, distil it into a dist-head student."""
    from kdiqa.cache import CachedViews
    from kdiqa.data.datamodule import IQADataModule, make_sampler

    root = make_ava(tmp_path / "AVA") if name == "ava" else make_tad66k(tmp_path / "TAD66K")
    fit_dir, kd_dir = tmp_path / "fit", tmp_path / "kd"
    tiny_teacher = ["teacher.options.preset=tiny", "teacher.options.theme_weights=null"]
    assert main(["run", f"recipes/tanet/{name}.yaml", *_tiny(root, fit_dir), *tiny_teacher]) == 0
    teacher = Teacher.from_pretrained(fit_dir / "teacher")
    assert teacher.config["task"] == name and teacher.config["preset"] == "tiny"
    assert -1 <= json.loads((fit_dir / "metrics.json").read_text())["teacher"]["test"]["srcc"] <= 1

    stages = "stages=[cache,distill,baseline]" if name == "ava" else "stages=[cache,distill]"
    student = ["student.options.backbone=kdiqa_cnn_tiny", "cache.views_per_image=2", stages]
    recipe_args = [*_tiny(root, kd_dir), f"teacher.checkpoint={fit_dir / 'teacher'}", *student]
    assert main(["run", f"recipes/tanet/distill_{name}.yaml", *recipe_args]) == 0
    out = Student.from_pretrained(kd_dir / "students" / "kd")(torch.rand(2, 3, 32, 32))
    assert out["dist"].shape == (2, 10) and out["score"].shape == (2,)
    assert {"train/kd_score/mse", "train/label/mse"} <= _logged(kd_dir, "student_kd")
    if name == "tad66k":
        return

    assert "train/dist/emd" in _logged(fit_dir, "teacher")  # the teacher learnt from the vote distributions
    assert "train/kd_dist/emd" in _logged(kd_dir, "student_kd")  # the student from the teacher's
    assert {"student_kd", "student_label_only"} <= set(json.loads((kd_dir / "metrics.json").read_text()))
    recipe = load_recipe("recipes/tanet/distill_ava.yaml", recipe_args)
    dm = IQADataModule(recipe.data, recipe.views)
    dm.setup()
    item = CachedViews(kd_dir / "cache" / "teacher.h5", dm.splits["train"], make_sampler(recipe.views, True))[0]
    assert item["teacher"]["dist"].shape == (10,) and abs(float(item["teacher"]["dist"].sum()) - 1) < 1e-2  # fp16
    batch = next(iter(dm.train_dataloader()))
    assert batch["dist"].shape == (8, 10)  # AVA votes reach the fit module as label distributions
