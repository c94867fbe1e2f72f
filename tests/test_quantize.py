"""int8 and fp16 exports: calibrated on the recipe's training views, checked on its held-out split, refused or flagged."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from conftest import make_blur_dataset

from kdiqa.cli.main import main
from kdiqa.config import load_recipe
from kdiqa.data.datamodule import IQADataModule
from kdiqa.export import export_student
from kdiqa.exported import load_exported, sidecar_path
from kdiqa.metrics import srcc
from kdiqa.quantize import float_ends, pool_as_global_average
from kdiqa.registry import STUDENTS, TEACHERS
from kdiqa.run import prepare_run
from kdiqa.stages import stage_cache
from kdiqa.students.base import Student

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
SIZE = 24


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder like `kdiqa run` leaves: recipe.yaml, a cache of training views, students/kd (random weights)."""
    root = tmp_path_factory.mktemp("quantize")
    data = make_blur_dataset(root / "blur", n=60)
    recipe_file = root / "toy.yaml"
    recipe_file.write_text(textwrap.dedent(f"""
        name: toy
        out: {root / "run"}
        seed: 0
        data: {{name: csv, root: {data}, options: {{mos_range: [0, 1]}}, batch_size: 8, eval_batch_size: 16}}
        views: {{size: {SIZE}, train_scale: [0.6, 1.0]}}
        teacher: {{name: toy}}
        student: {{name: timm, options: {{backbone: kdiqa_cnn_tiny}}}}
        cache: {{views_per_image: 2, batch_size: 16}}
    """))
    recipe = load_recipe(recipe_file)
    run = prepare_run(recipe)
    torch.manual_seed(0)
    TEACHERS.build("toy").save_pretrained(run.teacher)
    stage_cache(recipe, run)
    torch.manual_seed(0)
    student = STUDENTS.build("timm", backbone="kdiqa_cnn_tiny", image_size=SIZE, head="pooled_mlp")
    with torch.no_grad():  # a random head's scores differ by ~1e-4 (float16 rounds them into ties); a trained one's by ~0.3
        student.head.mlp[-1].weight.mul_(500.0)
    student.save_pretrained(run.student("kd"))
    return {"recipe": recipe_file, "run": run, "student": run.student("kd"), "root": root}


def test_int8_export_is_calibrated_on_cached_views_and_records_its_accuracy_check(run, tmp_path):
    out = tmp_path / "kd.int8.onnx"
    meta = export_student(run["student"], precision="int8", out=out, calibration=16, max_srcc_drop=1.0)
    side = json.loads(sidecar_path(out).read_text())
    assert side["precision"] == "int8" and side["accuracy"] == meta["accuracy"]
    calibration = side["conversion"]["calibration"]
    assert calibration["views"] == "cached" and calibration["count"] == 16 == side["conversion"]["calibration_images"]
    assert side["parity"]["max_abs_diff"] <= 1e-4  # the float graph was checked before it was quantized

    # the check's figures are what the float student and the file score on the recipe's test split
    dm = IQADataModule(load_recipe(run["recipe"]).data, load_recipe(run["recipe"]).views)
    dm.setup()
    test = dm.split_dataset("test")
    x = torch.stack([test[i]["image"] for i in range(len(test))])
    mos = np.array([s.mos for s in test.samples])
    with torch.no_grad():
        ref = Student.from_pretrained(run["student"])(x)["score"].numpy()
    got = load_exported(out)(x)["score"].numpy()  # what `kdiqa predict --model` runs
    acc = side["accuracy"]
    assert acc["split"] == "test" and acc["images"] == len(test) >= 3
    assert acc["float"]["srcc"] == pytest.approx(srcc(ref, mos), abs=1e-6)
    assert acc["exported"]["srcc"] == pytest.approx(srcc(got, mos), abs=1e-6)
    assert acc["delta_srcc"] == pytest.approx(acc["exported"]["srcc"] - acc["float"]["srcc"])
    assert acc["passed"] is (abs(acc["delta_srcc"]) <= 1.0) and acc["forced"] is False
    assert acc["max_abs_score_diff"] == pytest.approx(float(np.abs(ref - got).max()), abs=1e-6)

    # int8 where it pays, float at the ends: the contrast normalisation's box sums and the score itself
    graph = onnx.load(str(out)).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 0
    produced = {o: n for n in graph.node for o in n.output}
    assert produced["score"].op_type not in ("DequantizeLinear", "QuantizeLinear")
    cumsums = [n for n in graph.node if n.op_type == "CumSum"]
    assert cumsums and all(produced[n.input[0]].op_type != "DequantizeLinear" for n in cumsums)


def test_int8_without_a_cache_calibrates_on_sampled_training_views(run, tmp_path):
    """A student outside its run folder, with --recipe naming a run without a cache."""
    student = tmp_path / "student"
    Student.from_pretrained(run["student"]).save_pretrained(student)
    out = tmp_path / "s.int8.onnx"
    args = ["export", str(student), "--quantize", "int8", "--recipe", str(run["recipe"]), "--out", str(out),
            "--calibration", "8", "--max-srcc-drop", "1", "--check-split", "val", "--dynamic-batch"]
    cache = run["run"].cache
    moved = cache.with_name("elsewhere.h5")
    cache.rename(moved)
    try:
        assert main(args) == 0
    finally:
        moved.rename(cache)
    side = json.loads(sidecar_path(out).read_text())
    assert side["conversion"]["calibration"]["views"] == "sampled from the train split"
    assert side["accuracy"]["split"] == "val" and side["input"]["batch"] is None
    assert load_exported(out)(torch.rand(3, 3, SIZE, SIZE))["score"].shape == (3,)


def _negated(real):
    """A conversion that wrecks the model: the score's sign flipped (the ranking reversed)."""
    def convert(src, dst, *args, **kwargs):
        info = real(src, dst, *args, **kwargs)
        model = onnx.load(str(dst))
        for node in model.graph.node:
            node.output[:] = ["score_raw" if o == "score" else o for o in node.output]
        model.graph.node.append(onnx.helper.make_node("Neg", ["score_raw"], ["score"]))
        onnx.save(model, str(dst))
        return info
    return convert


def test_a_failed_accuracy_check_writes_nothing_unless_forced(run, tmp_path, monkeypatch, capsys):
    import kdiqa.export

    monkeypatch.setattr(kdiqa.export, "convert_fp16", _negated(kdiqa.export.convert_fp16))
    out = tmp_path / "bad.fp16.onnx"
    args = ["export", str(run["student"]), "--precision", "fp16", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "accuracy check failed" in err and "--force" in err
    assert list(tmp_path.iterdir()) == []  # no file, no sidecar, no temporary left behind

    assert main([*args, "--force"]) == 0
    assert "FAILED, kept because of --force" in capsys.readouterr().out
    acc = json.loads(sidecar_path(out).read_text())["accuracy"]
    assert acc["passed"] is False and acc["forced"] is True
    assert acc["exported"]["srcc"] * acc["float"]["srcc"] < 0 and abs(acc["delta_srcc"]) > 0.5  # the reversed ranking, recorded


def test_fp16_export_keeps_float32_inputs_and_scores_like_the_student(run, tmp_path):
    out = tmp_path / "kd.fp16.onnx"
    meta = export_student(run["student"], precision="fp16", out=out, dynamic_batch=True)
    assert meta["accuracy"]["passed"] and abs(meta["accuracy"]["delta_srcc"]) <= 0.01
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in model.graph.initializer if t.dims and np.prod(t.dims) > 16]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    x = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = Student.from_pretrained(run["student"])(x)["score"]
    assert torch.allclose(load_exported(out)(x)["score"], ref, atol=1e-2, rtol=0)


def test_squeeze_excitation_pooling_becomes_global_average_pool_with_the_same_numbers(tmp_path):
    torch.manual_seed(0)
    folder = STUDENTS.build("timm", backbone="test_efficientnet", image_size=32).save_pretrained(tmp_path / "s")
    export_student(folder, out=tmp_path / "f.onnx", dynamic_batch=True)
    before, after = tmp_path / "f.onnx", tmp_path / "g.onnx"
    after.write_bytes(before.read_bytes())
    changed = pool_as_global_average(after)

    def count(path, op):
        return sum(n.op_type == op for n in onnx.load(str(path)).graph.node)

    assert changed > 0 and count(before, "GlobalAveragePool") == 0 and count(after, "GlobalAveragePool") == changed
    assert count(before, "ReduceMean") - count(after, "ReduceMean") == changed
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    run_a, run_b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (before, after))
    assert np.allclose(run_a.run(None, {"images": x})[0], run_b.run(None, {"images": x})[0], atol=1e-6)
    ends = float_ends(after)
    assert any("/taps/" in name for name in ends) and any("/head/" in name for name in ends)  # normalisation, last layer


@pytest.mark.parametrize("args, message", [
    (["--quantize", "int4"], "unknown value 'int4' (choose from int8)"),
    (["--precision", "int8"], "int8 is --quantize int8"),
    (["--quantize", "int8", "--precision", "fp16"], "not both"),
    (["--quantize", "int8", "--format", "torchscript"], "needs --format onnx"),
    (["--quantize", "int8", "--calibration", "0"], "need at least 1 view"),
    (["--precision", "fp16", "--check-split", "train"], "split must be one of test, val"),
    (["--quantize", "int8", "--recipe", "no/such/recipe.yaml"], "no/such/recipe.yaml"),
])
def test_bad_export_options_are_one_line_errors(run, args, message, capsys):
    assert main(["export", str(run["student"]), *args, "--out", str(run["root"] / "never.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("kdiqa: error:") and message in err
    assert not (run["root"] / "never.onnx").exists()


def test_a_student_outside_a_run_folder_needs_a_recipe(tmp_path, capsys):
    torch.manual_seed(0)
    folder = STUDENTS.build("timm", backbone="kdiqa_cnn_tiny", image_size=SIZE).save_pretrained(tmp_path / "lonely")
    assert main(["export", str(folder), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not in a run folder" in err and "--recipe" in err
