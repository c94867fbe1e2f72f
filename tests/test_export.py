"""Export to ONNX / TorchScript: parity with PyTorch, batch axes, metadata, predict through the runtimes, errors."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from kdiqa.cli.main import main
from kdiqa.errors import CheckpointError, KdiqaError
from kdiqa.export import ExportError, ScoreGraph, export_student
from kdiqa.exported import load_exported, sidecar_path
from kdiqa.measure import count_parameters
from kdiqa.predict import predict_paths
from kdiqa.registry import STUDENTS
from kdiqa.students.base import Student

SIZE = 32
STUDENTS_UNDER_TEST = {
    "efficientnet": {"backbone": "test_efficientnet", "head": "pooled_mlp"},
    "mobilenetv3": {"backbone": "mobilenetv3_small_050", "head": "dist"},
}


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """One saved student per timm family (random weights, 32 px)."""
    root = tmp_path_factory.mktemp("students")
    folders = {}
    for name, options in STUDENTS_UNDER_TEST.items():
        torch.manual_seed(0)
        folders[name] = STUDENTS.build("timm", image_size=SIZE, **options).save_pretrained(root / name)
    return folders


def reference(folder, x: torch.Tensor) -> dict:
    with torch.no_grad():
        return Student.from_pretrained(folder)(x)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", list(STUDENTS_UNDER_TEST))
def test_onnx_dynamic_batch_matches_pytorch(saved, family, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    meta = export_student(saved[family], "onnx", out=out, dynamic_batch=True)
    assert meta["parity"]["checked"] and meta["parity"]["max_abs_diff"] <= 1e-4
    assert any("real photographs" in b for b in meta["parity"]["batches"])  # not only random noise

    graph = onnx.load(str(out)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, SIZE, SIZE]
    has_dist = STUDENTS_UNDER_TEST[family]["head"] == "dist"
    assert [o.name for o in graph.output] == (["score", "dist"] if has_dist else ["score"])  # no taps, no features

    model = load_exported(out)
    assert model.config["image_size"] == [SIZE, SIZE]
    for n in (1, 7):
        x = images(n, seed=n)
        ref, got = reference(saved[family], x), model(x)
        assert got["score"].shape == (n,)
        assert torch.allclose(got["score"], ref["score"], atol=1e-4, rtol=0)
        if has_dist:
            assert got["dist"].shape == (n, 10)
            assert torch.allclose(got["dist"], ref["dist"], atol=1e-4, rtol=0)
        else:
            assert got["dist"] is None
    # the file alone carries the input convention, identical to the sidecar
    assert json.loads(sidecar_path(out).read_text())["input"] == model.meta["input"]
    assert model.meta["input"]["range"] == [0.0, 1.0] and model.meta["input"]["layout"] == "NCHW"


def test_onnx_fixed_batch_is_fed_in_padded_chunks(saved, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "b3.onnx"
    export_student(saved["efficientnet"], "onnx", out=out, batch_size=3)
    model = load_exported(out)
    assert model.batch == 3 and model.session.get_inputs()[0].shape == [3, 3, SIZE, SIZE]
    x = images(7, seed=3)  # 3 + 3 + 1 (padded to 3, padding dropped)
    got = model(x)["score"]
    assert got.shape == (7,)
    assert torch.allclose(got, reference(saved["efficientnet"], x)["score"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", list(STUDENTS_UNDER_TEST))
def test_torchscript_export_matches_pytorch(saved, family, tmp_path):
    out = tmp_path / "m.pt"
    meta = export_student(saved[family], "torchscript", out=out, dynamic_batch=True)
    assert meta["parity"]["max_abs_diff"] <= 1e-4
    model = load_exported(out)
    assert model.format == "torchscript" and model.config["image_size"] == [SIZE, SIZE]
    for n in (1, 7):
        x = images(n, seed=10 + n)
        ref = reference(saved[family], x)
        got = model(x)
        assert torch.allclose(got["score"], ref["score"], atol=1e-4, rtol=0)
        if ref["dist"] is not None:
            assert torch.allclose(got["dist"], ref["dist"], atol=1e-4, rtol=0)


def test_only_the_projector_the_head_reads_is_exported(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    projectors = [
        {"tap": -1, "target": "quality_map", "shape": [4, 4, 4], "kind": "official"},
        {"tap": 0, "target": "unused", "shape": [64, 16, 16], "kind": "conv"},  # for the feature loss only
    ]
    torch.manual_seed(0)
    student = STUDENTS.build("timm", backbone="kdiqa_cnn_tiny", image_size=SIZE, head="official_mlp", projectors=projectors)
    folder = student.save_pretrained(tmp_path / "official")
    meta = export_student(folder, "onnx", out=tmp_path / "o.onnx")
    assert meta["parity"]["max_abs_diff"] <= 1e-4
    exported = sum(numpy_helper.to_array(t).size for t in onnx.load(str(tmp_path / "o.onnx")).graph.initializer)
    unused = sum(p.numel() for p in student.projectors[1].parameters())
    assert unused > 0 and exported <= count_parameters(student) - unused


def test_parity_failure_fails_loudly_and_writes_nothing(saved, tmp_path, monkeypatch):
    original = ScoreGraph.forward

    def drifting(self, images):  # an exporter that changed the numbers by 1e-3
        return tuple(o + 1e-3 for o in original(self, images))

    monkeypatch.setattr(ScoreGraph, "forward", drifting)
    out = tmp_path / "bad.pt"
    with pytest.raises(ExportError, match=r"parity check failed: max \|exported - PyTorch\| = 0.001"):
        export_student(saved["efficientnet"], "torchscript", out=out)
    assert not out.exists() and not sidecar_path(out).exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind either


def test_corrupt_checkpoint_is_one_line_error(saved, tmp_path, capsys):
    folder = tmp_path / "corrupt"
    shutil.copytree(saved["efficientnet"], folder)
    (folder / "model.safetensors").write_bytes(b"\x00garbage, not safetensors" * 8)
    assert main(["export", str(folder), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("kdiqa: error:") and "model.safetensors" in err
    assert not (folder / "model.torchscript.pt").exists()


def test_corrupt_exported_file_is_one_line_error(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a protobuf")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "broken.onnx" in err and "onnxruntime cannot load" in err
    (tmp_path / "a.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a TorchScript model"):
        load_exported(tmp_path / "a.pt")


def test_predict_with_onnx_matches_pytorch_on_a_folder(saved, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, (w, h) in enumerate([(40, 30), (32, 32), (64, 48), (20, 50), (33, 33)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")  # skipped with a warning on both paths
    onnx_path = tmp_path / "student.onnx"
    assert main(["export", str(saved["mobilenetv3"]), "--format", "onnx", "--dynamic-batch", "--out", str(onnx_path)]) == 0
    assert "max |diff|" in capsys.readouterr().out

    torch_rows = predict_paths(saved["mobilenetv3"], [folder], out=tmp_path / "torch.json", batch_size=4)
    assert main(["predict", str(folder), "--model", str(onnx_path), "--batch-size", "4", "--output", str(tmp_path / "onnx.json")]) == 0
    onnx_rows = json.loads((tmp_path / "onnx.json").read_text())
    assert [r["path"] for r in onnx_rows] == [r["path"] for r in torch_rows]
    assert [bool(r["error"]) for r in onnx_rows] == [bool(r["error"]) for r in torch_rows] == [False] * 5 + [True]
    for a, b in zip(onnx_rows[:5], torch_rows[:5], strict=True):
        assert abs(a["score"] - b["score"]) <= 1e-4


def test_without_onnxruntime_export_is_written_unverified(saved, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    out = tmp_path / "m.onnx"
    meta = export_student(saved["efficientnet"], "onnx", out=out)
    assert out.is_file() and meta["parity"] == {"checked": False, "reason": "onnxruntime not installed"}
    assert "parity check skipped: onnxruntime is not installed" in capsys.readouterr().err
    with pytest.raises(KdiqaError, match="onnxruntime is not installed"):
        load_exported(out)


@pytest.mark.slow
def test_dynamo_exporter_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")  # the torch.export-based exporter's dependency (in the export extra)
    torch.manual_seed(0)
    folder = STUDENTS.build("timm", backbone="kdiqa_cnn_tiny", image_size=SIZE, head="dist").save_pretrained(tmp_path / "tiny")
    out = tmp_path / "d.onnx"
    meta = export_student(folder, "onnx", out=out, dynamic_batch=True, exporter="dynamo")
    assert meta["onnx"] == {"exporter": "dynamo", "opset": 18} and meta["parity"]["max_abs_diff"] <= 1e-4
    x = images(7, seed=5)
    assert torch.allclose(load_exported(out)(x)["dist"], reference(folder, x)["dist"], atol=1e-4, rtol=0)
