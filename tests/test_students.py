"""Students: taps, projectors, heads, save/load, local pretrained weights, the small CNNs."""
from __future__ import annotations

import json
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F

from kdiqa.errors import CheckpointError, ConfigError
from kdiqa.io import save_weights
from kdiqa.models import load_model
from kdiqa.registry import STUDENTS
from kdiqa.students.base import Student
from kdiqa.students.small_cnn import LocalContrastInput, box_mean
from kdiqa.students.timm_student import TimmStudent, describe


def build(**kwargs) -> TimmStudent:
    kwargs.setdefault("backbone", "kdiqa_cnn_tiny")
    kwargs.setdefault("image_size", 32)
    return STUDENTS.build("timm", **kwargs)


@pytest.mark.parametrize(
    "backbone",
    ["test_resnet", "test_efficientnet", "mobilenetv3_small_050", "regnetx_002", "test_convnext", "kdiqa_cnn_tiny"],
)
def test_projectors_reach_teacher_shapes_for_timm_families(backbone):
    torch.manual_seed(0)
    projectors = [
        {"tap": -1, "target": "quality_map", "shape": [8, 16, 16], "kind": "official"},
        {"tap": 0, "target": "unet.up_blocks.2", "shape": [5, 7, 9], "kind": "conv"},
    ]
    student = build(backbone=backbone, projectors=projectors, image_size=32)
    declared = student.taps.backbone.feature_info  # what timm says; tap_shapes come from a dummy forward
    assert [s[0] for s in student.tap_shapes] == declared.channels()
    assert [32 // s[1] for s in student.tap_shapes] == declared.reduction()

    for size in (32, 40):  # other input sizes still land on the teacher's shapes
        out = student(torch.rand(2, 3, size, size))
        assert out["features"]["quality_map"].shape == (2, 8, 16, 16)
        assert out["features"]["unet.up_blocks.2"].shape == (2, 5, 7, 9)
        assert out["score"].shape == (2,)
    assert out["features"]["quality_map"].min() >= 0  # the official projector ends in ReLU
    assert student.feature_shapes() == {"quality_map": (8, 16, 16), "unet.up_blocks.2": (5, 7, 9)}


def test_pooled_mlp_head():
    student = build(head="pooled_mlp", pool="avg_max_min")
    out = student(torch.rand(3, 3, 32, 32))
    assert out["score"].shape == (3,)
    assert out["dist"] is None
    assert out["features"] == {}
    assert [t.shape for t in out["taps"]] == [(3, 16, 16, 16), (3, 32, 8, 8), (3, 64, 4, 4)]
    assert student.head.mlp[1].in_features == 3 * 64  # mean, max and min of 64 channels


def test_official_mlp_head_reads_the_projected_quality_map():
    projector = {"tap": -1, "target": "quality_map", "shape": [8, 8, 8], "kind": "official"}
    student = build(head="official_mlp", projectors=[projector])
    student.eval()
    head = student.head.mlp
    assert [m.out_features for m in head if isinstance(m, torch.nn.Linear)] == [512, 512, 1]
    assert head[2].in_features == 8 * 8 * 8
    images = torch.rand(2, 3, 32, 32)
    out = student(images)
    assert out["score"].shape == (2,)
    assert torch.allclose(out["score"], head(out["features"]["quality_map"]).squeeze(1))


def test_official_mlp_head_without_quality_map_is_a_config_error():
    with pytest.raises(ConfigError, match="official_mlp.*quality_map"):
        build(head="official_mlp", projectors=[{"target": "other", "shape": [8, 8, 8]}])


def test_dist_head_is_a_distribution_and_score_its_normalised_mean():
    student = build(head="dist")
    out = student(torch.rand(4, 3, 32, 32))
    dist = out["dist"]
    assert dist.shape == (4, 10)
    assert torch.all(dist >= 0)
    assert torch.allclose(dist.sum(1), torch.ones(4))
    expected = ((dist * torch.arange(1, 11)).sum(1) - 1) / 9
    assert torch.allclose(out["score"], expected)
    assert torch.all((out["score"] >= 0) & (out["score"] <= 1))


def test_backbone_receives_its_own_normalisation():
    for backbone, mean, std in [("test_efficientnet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ("kdiqa_cnn_tiny", (0.5,) * 3, (0.5,) * 3)]:
        student = build(backbone=backbone)
        seen: list[torch.Tensor] = []
        student.taps.backbone.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(args[0]))
        images = torch.rand(2, 3, 32, 32)
        student(images)
        expected = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        assert torch.allclose(seen[0], expected, atol=1e-6)


def test_gradients_reach_backbone_projector_and_head():
    student = build(projectors=[{"tap": 1, "target": "quality_map", "shape": [8, 8, 8], "kind": "conv"}])
    out = student(torch.rand(4, 3, 32, 32))
    (out["score"].sum() + out["features"]["quality_map"].square().mean()).backward()
    for module in (student.taps.backbone, student.projectors[0], student.head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters() if p.requires_grad)


def _saved_student(tmp_path):
    torch.manual_seed(0)
    projectors = [
        {"tap": -1, "target": "quality_map", "shape": [8, 8, 8], "kind": "official"},
        {"tap": 1, "target": "unet.up_blocks.1", "shape": [4, 8, 8], "kind": "conv", "hidden": 16},
    ]
    student = build(head="official_mlp", projectors=projectors, drop_rate=0.1)
    student.train()
    student(torch.rand(8, 3, 32, 32))  # move BatchNorm running statistics away from their initial values
    student.eval()
    return student, student.save_pretrained(tmp_path / "student")


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    student, folder = _saved_student(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["student"] == "timm" and meta["config"] == student.config

    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = student(images)
        for loaded in (Student.from_pretrained(folder), load_model(folder)):
            assert not loaded.training
            got = loaded(images)
            assert torch.equal(got["score"], expected["score"])
            for name in expected["features"]:
                assert torch.equal(got["features"][name], expected["features"][name])
            assert loaded.config == student.config


def test_load_errors_are_one_line_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="student folder not found") as missing:
        Student.from_pretrained(tmp_path / "nowhere")

    _, folder = _saved_student(tmp_path)
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read weights") as corrupt:
        Student.from_pretrained(folder)

    (folder / "model.safetensors").write_bytes(weights)
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["projectors"][1]["shape"] = [6, 8, 8]  # config no longer matches the weights
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="weights do not match config.json.*another shape") as mismatch:
        Student.from_pretrained(folder)

    meta["config"]["backbone"] = "kdiqa_cnn_smal"
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="config.json: unknown timm backbone") as bad_name:
        Student.from_pretrained(folder)

    for err in (missing, corrupt, mismatch, bad_name):
        assert "\n" not in str(err.value)


def _backbone_tensors(student: TimmStudent) -> dict[str, torch.Tensor]:
    return {k: v for k, v in student.taps.backbone.state_dict().items() if v.is_floating_point()}


def test_local_pretrained_file_from_a_full_timm_model_is_loaded(tmp_path):
    # convnext's feature wrapper renames stages.0 → stages_0 and drops the classifier: both must be handled
    torch.manual_seed(1)
    full = timm.create_model("test_convnext", pretrained=False)
    path = tmp_path / "test_convnext.pth"
    torch.save(full.state_dict(), path)
    with pytest.warns(UserWarning, match=r"loaded (\d+) of \1 tensors into backbone 'test_convnext'; \d+ unexpected"):
        student = build(backbone="test_convnext", pretrained=str(path))
    assert student.config["initialised_from"] == str(path)
    source = full.state_dict()
    loaded = _backbone_tensors(student)
    assert torch.equal(loaded["stages_0.blocks.0.conv_dw.weight"], source["stages.0.blocks.0.conv_dw.weight"])
    assert torch.equal(loaded["stem_0.weight"], source["stem.0.weight"])


def test_local_pretrained_safetensors_from_a_backbone_is_loaded_silently(tmp_path):
    torch.manual_seed(2)
    donor = build(backbone="test_resnet")
    path = tmp_path / "backbone.safetensors"
    save_weights(path, donor.taps.backbone.state_dict())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*tensors into backbone")  # an exact match must not warn
        student = build(backbone="test_resnet", pretrained=str(path))
    fresh = build(backbone="test_resnet")
    for key, value in _backbone_tensors(donor).items():
        assert torch.equal(_backbone_tensors(student)[key], value)
    assert not torch.equal(_backbone_tensors(fresh)["conv1.0.weight"], _backbone_tensors(donor)["conv1.0.weight"])


def test_pretrained_file_that_matches_nothing_is_an_error(tmp_path):
    path = tmp_path / "other.safetensors"
    save_weights(path, {"encoder.weight": torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match="other.safetensors: no tensor matches backbone 'kdiqa_cnn_tiny'"):
        build(pretrained=str(path))
    with pytest.raises(CheckpointError, match="weights file not found"):
        build(pretrained=str(tmp_path / "absent.pth"))
    with pytest.raises(ConfigError, match="local weights file path"):
        build(pretrained=True)


def test_unknown_backbone_is_one_line_with_close_matches():
    with pytest.raises(ConfigError) as err:
        build(backbone="resnet10")
    message = str(err.value)
    assert "\n" not in message
    assert "unknown timm backbone 'resnet10'" in message
    assert "did you mean" in message and "'resnet10t'" in message


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"tap": 7, "target": "a", "shape": [8, 4, 4]}, r"projectors\[0\].tap: index 7 out of range for 3 taps"),
        ({"target": "a", "shape": [8, 4, 4], "kind": "deconv"}, r"projectors\[0\].kind: unknown projector 'deconv'"),
        ({"target": "a", "shape": [8, 4]}, r"projectors\[0\].shape: expected three positive sizes"),
        ({"target": "a", "shape": [8, 4, 4], "layer": 2}, r"projectors\[0\]: unknown key 'layer'"),
        ({"shape": [8, 4, 4]}, r"projectors\[0\]: missing key 'target'"),
    ],
)
def test_bad_projector_specs_name_the_entry(spec, match):
    with pytest.raises(ConfigError, match=match):
        build(projectors=[spec])


def test_duplicate_projector_target_is_rejected():
    spec = {"target": "quality_map", "shape": [8, 4, 4]}
    with pytest.raises(ConfigError, match="'quality_map' appears more than once"):
        build(projectors=[spec, dict(spec, tap=0)])


def test_config_is_json_and_rebuilds_the_same_architecture():
    student = build(backbone="kdiqa_cnn_tiny", out_indices=[1, 2], head="dist", pool="avg_max_min", image_size=[32, 48])
    config = json.loads(json.dumps(student.config))
    twin = STUDENTS.build("timm", **config)
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in student.state_dict().items()}
    assert twin.tap_shapes == [(32, 8, 12), (64, 4, 6)]


def test_small_cnns_are_timm_models_with_features():
    small = timm.create_model("kdiqa_cnn_small")
    assert small(torch.rand(2, 3, 64, 64)).shape == (2, 1)
    assert 240_000 < sum(p.numel() for p in small.parameters()) < 280_000
    tiny = timm.create_model("kdiqa_cnn_tiny", features_only=True, out_indices=(1, 2))
    assert tiny.feature_info.channels() == [32, 64] and tiny.feature_info.reduction() == [4, 8]
    assert [t.shape for t in tiny(torch.rand(1, 3, 64, 64))] == [(1, 32, 16, 16), (1, 64, 8, 8)]
    info = describe("kdiqa_cnn_small", 64)
    assert info["taps"] == [[32, 32, 32], [64, 16, 16], [128, 8, 8]]
    assert info["params"] == sum(p.numel() for p in timm.create_model("kdiqa_cnn_small", features_only=True).parameters())


def test_contrast_input_keeps_raw_channels_beside_contrast_normalised_ones():
    # halving contrast barely changes the normalised channels but does change the raw ones: the
    # network needs both to see a loss of contrast
    lcn = LocalContrastInput(3, "rgb")
    image = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1  # not the global stream
    flat = lcn(image)
    low = lcn(image * 0.5)
    assert flat.shape == (1, 6, 24, 24)
    assert torch.allclose(flat[:, :3], low[:, :3], atol=0.05)
    assert torch.allclose(low[:, 3:], image * 0.5)
    assert LocalContrastInput(3, "luma")(image).shape == (1, 4, 24, 24)


def test_box_mean_matches_average_pooling():
    x = torch.rand(2, 3, 20, 17)
    for window in (3, 7):
        padded = F.pad(x, (window // 2,) * 4, mode="reflect")
        assert torch.allclose(box_mean(x, window), F.avg_pool2d(padded, window, stride=1), atol=1e-5)
