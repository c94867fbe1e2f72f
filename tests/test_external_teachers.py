"""External teachers: a pyiqa metric (against a fake pyiqa; real pyiqa when installed) and an ONNX model,
through the same machinery as DP-IQA: fit_teacher saves them, cache, distil (cached and online), eval,
predict, bench; scores mapped to [0, 1]; every download stopped before the network with a one-line error."""
from __future__ import annotations

import json
import pickle
import socket
import sys
import textwrap
import warnings

import fake_pyiqa
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from kdiqa.cache import CachedViews, teacher_fingerprint
from kdiqa.cli.main import main
from kdiqa.config import load_recipe
from kdiqa.data.datamodule import IQADataModule, make_sampler
from kdiqa.errors import CheckpointError, ConfigError
from kdiqa.registry import STUDENTS, TEACHERS
from kdiqa.teachers.base import Teacher
from kdiqa.teachers.external import MissingFileError, ScoreScale, parse_score_range

SIZE = 24
KD = [
    "student.options.backbone=kdiqa_cnn_tiny", "cache.views_per_image=2", "cache.batch_size=16", "trainer.max_epochs=1",
    "views.train_scale=[0.6,1.0]", "data.num_workers=0",
]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection that gets past kdiqa's guard to the real socket layer fails the test.

    Unix-domain sockets are local IPC, not the network: DataLoader workers (``kdiqa predict``) hand
    tensors back through one, so only internet sockets are refused.
    """
    reached: list[str] = []
    real_connect = socket.socket.connect

    def refuse(*args, **kwargs):
        reached.append(repr(args[-1] if args else kwargs))
        raise AssertionError(f"network reached: {args!r}")

    def connect(self, address):
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        refuse(address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: refuse(host))
    yield reached
    assert not reached, f"the network was reached: {reached}"


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """The fake pyiqa in sys.modules, with an empty torch hub folder."""
    hub = tmp_path / "hub"
    (hub / "pyiqa").mkdir(parents=True)
    return fake_pyiqa.install(monkeypatch, hub / "pyiqa"), hub


def _cnn(hub, **options):
    options.setdefault("metric_options", {"pretrained": None})  # random weights: no checkpoint to read
    return TEACHERS.build("pyiqa", metric="fakecnn", hub_dir=str(hub), **options)


def _weights(path, net: nn.Module, extra=None) -> str:
    torch.save({"params": net.state_dict(), **(extra or {})}, path)
    return str(path)


# ------------------------------------------------------------------------------------------- scales
def test_score_ranges_are_read_and_mapped_onto_kdiqa_scale():
    assert parse_score_range("~0, ~1") == (0.0, 1.0, True)
    assert parse_score_range("1, 10") == (1.0, 10.0, False)
    assert parse_score_range("~-1, ~2") == (-1.0, 2.0, True)
    assert parse_score_range([0, 100]) == (0.0, 100.0, False)
    for unreadable in (None, "~0, ~", "quality: 0, 1; rank: 0, 2", "1, 1", [3, 1]):
        assert parse_score_range(unreadable) is None
    raw = torch.tensor([0.0, 2.5, 10.0, 11.0])
    lower = ScoreScale(0, 10, lower_better=True)
    torch.testing.assert_close(lower.to_unit(raw), torch.tensor([1.0, 0.75, 0.0, -0.1]))  # not clamped: order kept
    torch.testing.assert_close(lower.from_unit(lower.to_unit(raw)), raw)


def test_tapped_outputs_become_maps_or_vectors():
    from kdiqa.teachers.external.common import as_feature

    tokens = torch.rand(2, 17, 8)  # a class token, then 4 x 4 patches
    assert as_feature("t", tokens, 2, "x").shape == (2, 8, 4, 4)
    torch.testing.assert_close(as_feature("t", tokens, 2, "x")[:, :, 0, 1], tokens[:, 2])
    assert as_feature("t", torch.rand(2, 16, 8), 2, "x").shape == (2, 8, 4, 4)
    assert as_feature("t", torch.rand(2, 11, 8), 2, "x").shape == (2, 8)  # not a grid: mean over tokens
    assert as_feature("t", (torch.rand(2, 3, 5, 5), "attention"), 2, "x").shape == (2, 3, 5, 5)
    with pytest.raises(ConfigError, match="for a batch of 2 .*crops"):
        as_feature("t", torch.rand(6, 3, 5, 5), 2, "x")


# ------------------------------------------------------------------------------------------- pyiqa
def test_pyiqa_teacher_scores_in_batches_what_pyiqa_scores_one_image_at_a_time(fake, no_network):
    _, hub = fake
    torch.manual_seed(0)
    teacher = TEACHERS.build("pyiqa", metric="fakecnn-lower", hub_dir=str(hub), features={"fmap": "body.2", "vec": "head"})
    assert teacher.scale == ScoreScale(0.0, 10.0, True) and teacher.needs_fitting is False
    images = torch.rand(5, 3, SIZE, SIZE)
    out = teacher(images)
    one_by_one = torch.cat([teacher.metric(images[i : i + 1]).reshape(1) for i in range(5)])
    torch.testing.assert_close(out.score, 1 - one_by_one / 10)  # lower is better on 0..10 → higher is better on [0, 1]
    torch.testing.assert_close(teacher.raw_score(out.score), one_by_one)
    assert out.features["fmap"].shape == (5, 4, SIZE // 2, SIZE // 2) and out.features["vec"].shape == (5, 1)
    assert teacher.feature_shapes(SIZE) == {"fmap": (4, SIZE // 2, SIZE // 2), "vec": (1,)}
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.metric.training  # a ready-made model stays in inference mode
    # views may overshoot [0, 1] by resampling; pyiqa asserts the range, the teacher clamps
    assert teacher(images * 1.0001).score.shape == (5,)


def test_pyiqa_options_are_checked_in_one_line(fake):
    _, hub = fake
    with pytest.raises(ConfigError, match=r"no module 'body\.9'; did you mean 'body\.2'"):
        _cnn(hub, features={"fmap": "body.9"})
    with pytest.raises(ConfigError, match="pyiqa has no metric 'fakecnm'; did you mean 'fakecnn'"):
        TEACHERS.build("pyiqa", metric="fakecnm")
    with pytest.raises(ConfigError, match="is FR .* must be no-reference"):
        TEACHERS.build("pyiqa", metric="fakefr")
    with pytest.raises(ConfigError, match=r"score_range: pyiqa metric 'fakenorange' gives no numeric score range \('~0, ~'\)"):
        TEACHERS.build("pyiqa", metric="fakenorange")
    assert TEACHERS.build("pyiqa", metric="fakenorange", score_range=[0, 2]).scale == ScoreScale(0.0, 2.0, False)
    with pytest.raises(ConfigError, match="metric_options: pyiqa metric 'fakecnn' does not take them"):
        _cnn(hub, metric_options={"pretrained": None, "no_such_option": 1})
    with pytest.raises(CheckpointError, match="weights: .*missing.pth: file not found"):
        _cnn(hub, weights=str(hub / "missing.pth"))


def test_a_missing_file_stops_the_build_before_the_network(fake, no_network, tmp_path, capsys):
    _, hub = fake
    # the metric's own checkpoint: named, with the option that takes it and where pyiqa would look
    with pytest.raises(MissingFileError) as caught:
        TEACHERS.build("pyiqa", metric="fakecnn", hub_dir=str(hub))
    message = str(caught.value)
    assert "\n" not in message and "never downloads" in message
    assert "FakeCNN_koniq-0123abcd.pth" in message and "teacher.options.weights" in message
    assert str(hub / "pyiqa" / "FakeCNN_koniq-0123abcd.pth") in message
    # a backbone through torch.hub: where to put it, and the option that moves that folder
    with pytest.raises(MissingFileError, match=rf"needs fakenet-4567ef01.pth .* put it at {hub / 'checkpoints' / 'fakenet-4567ef01.pth'} \(teacher.options.hub_dir"):
        TEACHERS.build("pyiqa", metric="fakebackbone", hub_dir=str(hub))
    # a library opening a URL itself: the URL named; one connecting a socket: stopped there, host named
    with pytest.raises(MissingFileError, match=r"needs model.bin \(http://fake-weights.invalid/clip/model.bin\)"):
        TEACHERS.build("pyiqa", metric="fakeurl", hub_dir=str(hub))
    with pytest.raises(MissingFileError, match="tried to reach fake-weights.invalid"):
        TEACHERS.build("pyiqa", metric="fakesocket", hub_dir=str(hub))
    # the CLI prints it as one line and exits 2
    assert main(["info", "teacher", "pyiqa", "--metric", "fakecnn"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["offline_build"].startswith("needs a file:") and info["released_checkpoints"] == {"koniq": "FakeCNN_koniq-0123abcd.pth"}
    assert info["lower_better"] is False and "(raw - 0)" in info["kdiqa_score"]


def test_files_already_in_the_cache_folders_are_used(fake, no_network):
    _, hub = fake
    torch.manual_seed(1)
    reference = fake_pyiqa.FakeCNN(pretrained=None)
    _weights(hub / "pyiqa" / "FakeCNN_koniq-0123abcd.pth", reference)
    teacher = TEACHERS.build("pyiqa", metric="fakecnn", hub_dir=str(hub))  # pyiqa's default checkpoint, found locally
    torch.testing.assert_close(teacher.metric.net.head.weight, reference.head.weight)
    (hub / "checkpoints").mkdir()
    torch.save(reference.body.state_dict(), hub / "checkpoints" / "fakenet-4567ef01.pth")
    teacher = TEACHERS.build("pyiqa", metric="fakebackbone", hub_dir=str(hub))
    torch.testing.assert_close(teacher.metric.net.body[0].weight, reference.body[0].weight)
    assert torch.hub.get_dir() != str(hub)  # the hub folder is set for the build only


class _NotATensor:
    pass


def test_weights_are_loaded_through_pyiqa_but_only_safely(fake, no_network, tmp_path):
    _, hub = fake
    torch.manual_seed(2)
    reference = fake_pyiqa.FakeCNN(pretrained=None)
    teacher = TEACHERS.build("pyiqa", metric="fakecnn", hub_dir=str(hub), weights=_weights(tmp_path / "w.pth", reference))
    torch.testing.assert_close(teacher.metric.net.body[2].weight, reference.body[2].weight)
    unsafe = _weights(tmp_path / "unsafe.pth", reference, {"extra": _NotATensor()})
    with pytest.raises(CheckpointError, match=r"unsafe.pth holds more than tensors .*weights_only=True"):
        TEACHERS.build("pyiqa", metric="fakecnn", hub_dir=str(hub), weights=unsafe)


def test_saved_pyiqa_teacher_reloads_and_fingerprints_cover_options_and_weights(fake, tmp_path):
    _, hub = fake
    torch.manual_seed(3)
    net = fake_pyiqa.FakeCNN(pretrained=None)
    weights = _weights(tmp_path / "w.pth", net)
    teacher = TEACHERS.build("pyiqa", metric="fakecnn", hub_dir=str(hub), weights=weights, features={"fmap": "body.2"})
    folder = teacher.save_pretrained(tmp_path / "teacher")
    again = Teacher.from_pretrained(folder)
    x = torch.rand(3, 3, SIZE, SIZE)
    torch.testing.assert_close(again(x).score, teacher(x).score)
    torch.testing.assert_close(again(x).features["fmap"], teacher(x).features["fmap"])
    same = TEACHERS.build("pyiqa", metric="fakecnn", hub_dir=str(hub), weights=weights, features={"fmap": "body.2"})
    assert teacher_fingerprint(same) == teacher_fingerprint(teacher) == teacher_fingerprint(again)
    other_range = TEACHERS.build("pyiqa", metric="fakecnn", hub_dir=str(hub), weights=weights, features={"fmap": "body.2"}, score_range=[0, 2])
    with torch.no_grad():
        net.head.bias += 1
    retrained = TEACHERS.build("pyiqa", metric="fakecnn", hub_dir=str(hub), weights=_weights(tmp_path / "w.pth", net), features={"fmap": "body.2"})
    assert len({teacher_fingerprint(t) for t in (teacher, other_range, retrained)}) == 3


def test_without_pyiqa_a_one_line_error_says_what_to_install(monkeypatch, capsys):
    for name in [n for n in list(sys.modules) if n == "pyiqa" or n.startswith("pyiqa.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # import pyiqa → ImportError
    assert main(["info", "teacher", "pyiqa", "--metric", "topiq_nr"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'kdiqa[pyiqa]'" in err and "PolyForm Noncommercial" in err
    assert main(["info", "teachers"]) == 0
    assert {"pyiqa", "onnx"} <= set(capsys.readouterr().out.split())


def _recipe(tmp_path, dataset, teacher: str) -> str:
    path = tmp_path / "external.yaml"
    path.write_text(textwrap.dedent(f"""
        name: external
        out: {tmp_path / "run"}
        seed: 0
        data: {{name: csv, root: {dataset}, options: {{mos_range: [0, 1]}}, batch_size: 8, eval_batch_size: 16}}
        views: {{size: {SIZE}}}
        trainer: {{max_epochs: 1, logger: csv, progress_bar: false, accelerator: cpu, devices: 1}}
        distill:
          fit: {{optim: {{name: adam, lr: 0.01}}, losses: [{{name: mse}}]}}
        stages: [fit_teacher, eval, cache, distill]
    """) + teacher)
    return str(path)


def _cached_batch(recipe_path, overrides, run_dir):
    recipe = load_recipe(recipe_path, overrides)
    dm = IQADataModule(recipe.data, recipe.views)
    dm.setup()
    views = CachedViews(run_dir / "cache" / "teacher.h5", dm.distill_samples(), make_sampler(recipe.views, train=True))
    return default_collate([views[i] for i in range(len(views))])


@pytest.mark.parametrize("source", ["fake", "real"])
def test_student_distilled_from_a_pyiqa_teacher_end_to_end(source, monkeypatch, no_network, tmp_path, blur_dataset, capsys):
    """Real pyiqa (when installed): CNNIQA with random weights, the metric that builds offline and is small."""
    hub = tmp_path / "hub"
    if source == "fake":
        fake_pyiqa.install(monkeypatch, hub / "pyiqa")
        metric, tap = "fakecnn", "body.2"
    else:
        pytest.importorskip("pyiqa")
        metric, tap = "cnniqa", "conv1"
    teacher_yaml = textwrap.dedent(f"""
        teacher:
          name: pyiqa
          options: {{metric: {metric}, hub_dir: {hub}, metric_options: {{pretrained: null}}, features: {{fmap: {tap}}}}}
    """)
    recipe = _recipe(tmp_path, blur_dataset, teacher_yaml)
    overrides = [*KD, "cache.features=[fmap]", "distill.features=[{target: fmap, tap: -1, kind: conv, loss: mse, weight: 0.5}]"]
    assert main(["run", recipe, *overrides]) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"teacher", "student_kd"} <= set(metrics) and -1 <= metrics["student_kd"]["test"]["srcc"] <= 1
    assert json.loads((run / "teacher" / "config.json").read_text())["teacher"] == "pyiqa"  # saved as built, not fitted
    assert not (run / "checkpoints" / "teacher").exists()

    teacher = Teacher.from_pretrained(run / "teacher").eval()
    batch = _cached_batch(recipe, overrides, run)
    with torch.no_grad():
        direct = teacher(batch["image"])
    torch.testing.assert_close(batch["teacher"]["score"], direct.score, rtol=0, atol=1e-6)  # scores are stored in float32
    torch.testing.assert_close(batch["teacher"]["fmap"], direct.features["fmap"], rtol=2e-3, atol=2e-3)  # fp16 maps

    online = [*overrides, f"out={tmp_path / 'online'}", f"teacher.checkpoint={run / 'teacher'}", "distill.source=online"]
    assert main(["distill", recipe, *online]) == 0
    assert "student_kd" in json.loads((tmp_path / "online" / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["predict", str(blur_dataset / "imgs"), "--model", str(run / "teacher"), "--size", str(SIZE)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + len(list((blur_dataset / "imgs").iterdir()))


# ------------------------------------------------------------------------------------------- onnx
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A kdiqa student exported to ONNX by kdiqa's own export path (dynamic batch, parity-checked)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from kdiqa.export import export_student

    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    student = STUDENTS.build("timm", backbone="kdiqa_cnn_tiny", head="pooled_mlp", image_size=SIZE)
    folder = student.save_pretrained(root / "student")
    export_student(folder, "onnx", out=root / "student.onnx", dynamic_batch=True)
    return root / "student.onnx"


def test_kdiqa_export_fills_the_options_and_scores_like_onnxruntime(exported, tmp_path):
    import onnxruntime

    teacher = TEACHERS.build("onnx", path=str(exported))
    cfg = teacher.config
    assert (cfg["input_size"], cfg["input_range"], cfg["output"], cfg["score_range"]) == ([SIZE, SIZE], [0.0, 1.0], "score", [0.0, 1.0])
    assert "path" not in cfg and len(cfg["initialised_from"]["blake2b"]) == 32
    x = torch.rand(3, 3, SIZE, SIZE)
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    direct = session.run(["score"], {"images": x.numpy()})[0]
    torch.testing.assert_close(teacher(x).score, torch.from_numpy(direct).reshape(-1))
    # views of another size are resized to the model's
    assert teacher(torch.rand(2, 3, 2 * SIZE, SIZE)).score.shape == (2,)
    # the saved teacher holds the model's bytes: it reloads with the .onnx file gone
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(exported.read_bytes())
    folder = TEACHERS.build("onnx", path=str(copy)).save_pretrained(tmp_path / "teacher")
    copy.unlink()
    again = Teacher.from_pretrained(folder)
    torch.testing.assert_close(again(x).score, teacher(x).score)
    assert teacher_fingerprint(again) == teacher_fingerprint(teacher)
    assert teacher_fingerprint(TEACHERS.build("onnx", path=str(exported), score_range=[0, 2])) != teacher_fingerprint(teacher)


class _Foreign(nn.Module):
    """Another tool's model: BGR in [0, 255], ImageNet-normalised, MOS on 1..5, a feature map output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        return 1 + 4 * torch.sigmoid(self.fc(f.mean((2, 3)))), f


def _export_foreign(path, batch: int | None):
    torch.manual_seed(4)
    model = _Foreign().eval()
    kwargs = {"input_names": ["input"], "output_names": ["mos", "feat"], "opset_version": 17, "dynamo": False}
    if batch is None:
        kwargs["dynamic_axes"] = {"input": {0: "b"}, "mos": {0: "b"}, "feat": {0: "b"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(batch or 2, 3, SIZE, SIZE),), str(path), **kwargs)
    return model


MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


@pytest.mark.parametrize("batch", [None, 2])
def test_foreign_onnx_model_with_an_explicit_input_convention(tmp_path, batch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "foreign.onnx"
    model = _export_foreign(path, batch)
    with pytest.raises(ConfigError, match="score_range: the scale of this model's score is unknown"):
        TEACHERS.build("onnx", path=str(path))
    with pytest.raises(ConfigError, match=r"output: the model has no output 'score' \(it has: mos, feat\)"):
        TEACHERS.build("onnx", path=str(path), output="score", score_range=[1, 5])
    teacher = TEACHERS.build("onnx", path=str(path), input_range=[0, 255], mean=MEAN[::-1], std=STD[::-1], color="BGR",
                             score_range=[1, 5], features={"feat": "feat"})
    x = torch.rand(3, 3, SIZE, SIZE)  # 3 images: a fixed batch of 2 is fed as 2 + 1 padded
    bgr = (x * 255).flip(1)
    with torch.no_grad():
        mos, feat = model((bgr - torch.tensor(MEAN[::-1]).view(1, 3, 1, 1)) / torch.tensor(STD[::-1]).view(1, 3, 1, 1))
    out = teacher(x)
    torch.testing.assert_close(out.score, (mos.reshape(-1) - 1) / 4, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.features["feat"], feat, rtol=1e-4, atol=1e-5)
    assert teacher.feature_shapes(SIZE) == {"feat": (4, SIZE // 2, SIZE // 2)}


def test_a_probability_output_is_a_distribution_over_one_to_k(tmp_path):
    pytest.importorskip("onnxruntime")

    class Bins(nn.Module):
        def forward(self, x):
            return torch.softmax(torch.stack([x.mean((1, 2, 3)) * k for k in range(1, 6)], 1), 1)

    path = tmp_path / "bins.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Bins(), (torch.rand(2, 3, 8, 8),), str(path), input_names=["x"], output_names=["p"],
                          dynamic_axes={"x": {0: "b"}, "p": {0: "b"}}, opset_version=17, dynamo=False)
    teacher = TEACHERS.build("onnx", path=str(path))  # a (B, 5) probability output: scores 1..5, range [1, 5]
    x = torch.rand(2, 3, 8, 8)
    out = teacher(x)
    assert out.dist.shape == (2, 5) and teacher.config["score_range"] == [1.0, 5.0]
    torch.testing.assert_close(out.score, ((out.dist * torch.arange(1, 6)).sum(1) - 1) / 4)


def test_student_distilled_from_an_onnx_teacher_end_to_end(exported, tmp_path, blur_dataset, capsys):
    import onnxruntime

    recipe = _recipe(tmp_path, blur_dataset, f"teacher: {{name: onnx, options: {{path: {exported}}}}}\n")
    overrides = [*KD, "cache.features=[]"]
    assert main(["run", recipe, *overrides]) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"teacher", "student_kd"} <= set(metrics)
    batch = _cached_batch(recipe, overrides, run)
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    direct = session.run(["score"], {"images": batch["image"].numpy()})[0]
    np.testing.assert_allclose(batch["teacher"]["score"].numpy(), direct.reshape(-1), rtol=0, atol=1e-6)

    from kdiqa.bench import run_bench
    from kdiqa.run import RunDir

    cfg = load_recipe(recipe, overrides)
    rows = run_bench(cfg, RunDir.of(cfg), ["kdiqa_cnn_tiny"], teacher="trained", repeats=1, teacher_repeats=1,
                     warmup=0, batch=2, teacher_batch=2, say=lambda _: None)
    row = next(r for r in rows if r.kind == "teacher")
    assert row.model == "teacher onnx (trained)" and "onnxruntime" in row.note and row.latency_ms > 0


def test_recipe_with_a_pyiqa_or_onnx_teacher_fails_in_one_line_without_its_file(tmp_path, blur_dataset, capsys):
    recipe = _recipe(tmp_path, blur_dataset, f"teacher: {{name: onnx, options: {{path: {tmp_path / 'none.onnx'}}}}}\n")
    assert main(["fit-teacher", recipe]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none.onnx: ONNX file not found" in err


def test_unpicklable_session_is_dropped_and_reopened(exported):
    teacher = TEACHERS.build("onnx", path=str(exported))
    x = torch.rand(1, 3, SIZE, SIZE)
    first = teacher(x).score
    clone = pickle.loads(pickle.dumps(teacher))
    torch.testing.assert_close(clone(x).score, first)


# ------------------------------------------------------------------------------------------- real pyiqa
def test_real_pyiqa_builds_offline_and_stops_at_missing_files(no_network, tmp_path):
    """With pyiqa installed: metrics that need no file build with random weights; others name the file."""
    pytest.importorskip("pyiqa")
    hub = tmp_path / "hub"
    torch.manual_seed(0)
    cnniqa = TEACHERS.build("pyiqa", metric="cnniqa", hub_dir=str(hub), metric_options={"pretrained": None})
    assert cnniqa(torch.rand(2, 3, 64, 64)).score.shape == (2,)
    with pytest.raises(MissingFileError, match="CNNIQA_koniq10k-e6f14c91.pth .*teacher.options.weights"):
        TEACHERS.build("pyiqa", metric="cnniqa", hub_dir=str(hub))
    # TOPIQ-NR as the recipe builds it: the whole network from `weights`, no backbone download
    topiq = TEACHERS.build("pyiqa", metric="topiq_nr", hub_dir=str(hub),
                           metric_options={"pretrained": False, "backbone_pretrain": False})
    weights = _weights(tmp_path / "topiq.pth", topiq.metric.net)
    recipe = load_recipe("recipes/external/pyiqa_topiq_koniq10k.yaml", ["data.root=/d", f"teacher.options.weights={weights}",
                                                                        f"teacher.options.hub_dir={hub}"])
    teacher = TEACHERS.build(recipe.teacher.name, **recipe.teacher.options)
    out = teacher(torch.rand(2, 3, 224, 224))
    torch.testing.assert_close(teacher.metric.net.semantic_model.conv1.weight, topiq.metric.net.semantic_model.conv1.weight)
    assert set(out.features) == set(recipe.cache.features)
    with pytest.raises(MissingFileError, match="of timm/resnet50"):
        TEACHERS.build("pyiqa", metric="topiq_nr", hub_dir=str(hub), metric_options={"pretrained": False})


# ------------------------------------------------------------------------------------------- plugin
def test_plugin_teacher_installed_through_its_entry_point(tmp_path, monkeypatch, blur_dataset, capsys):
    """examples/plugin_teacher, pip-installed into a temporary folder, is found, listed, saved and distilled from."""
    import importlib
    import shutil
    import subprocess
    from pathlib import Path

    setuptools = pytest.importorskip("setuptools", reason="building the example offline needs setuptools here")
    if tuple(int(v) for v in setuptools.__version__.split(".")[:2]) < (70, 1):
        pytest.importorskip("wheel", reason="setuptools < 70.1 builds wheels only with the wheel package")
    source = tmp_path / "plugin_src"  # a copy: building in the example's folder would leave build/ there
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "plugin_teacher", source)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(site), str(source)], check=True, capture_output=True)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setattr(TEACHERS, "_items", dict(TEACHERS._items))  # the registry as it was, after the test
    monkeypatch.setattr(TEACHERS, "_loaded", TEACHERS._loaded)
    try:
        TEACHERS.reload()
        assert main(["info", "teachers"]) == 0
        assert "sharpness" in capsys.readouterr().out.split()
        recipe = _recipe(tmp_path, blur_dataset, "teacher: {name: sharpness, options: {gain: 6}}\n")
        overrides = [*KD, "cache.features=[edges]", "distill.features=[{target: edges, tap: -1, kind: conv, loss: mse, weight: 0.5}]"]
        assert main(["run", recipe, *overrides]) == 0
        teacher = Teacher.from_pretrained(tmp_path / "run" / "teacher")
        assert type(teacher).__module__ == "kdiqa_plugin_example" and teacher.config == {"gain": 6.0}
        assert "student_kd" in json.loads((tmp_path / "run" / "metrics.json").read_text())
    finally:
        sys.modules.pop("kdiqa_plugin_example", None)
