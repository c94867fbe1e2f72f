"""`kdiqa bench`: the files it writes, FLOPs that match a hand count, one-line errors, SRCC after KD."""
import csv
import math

import pytest
import torch
from torch import nn

from kdiqa.bench import BENCH_COLUMNS, pareto_front, read_csv
from kdiqa.cli.main import main
from kdiqa.config import load_recipe
from kdiqa.measure import LiveTensorBytes, count_flops, count_parameters, peak_memory, percentile, time_interleaved
from kdiqa.registry import TEACHERS
from kdiqa.run import prepare_run
from kdiqa.stages import stage_cache

FAST = ["--repeats", "2", "--warmup", "1", "--batch", "4", "--teacher-batch", "2", "--teacher-repeats", "1"]


def read_rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def tiny_conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 1))


def test_flops_match_a_hand_count():
    # conv: 2 FLOPs per multiply-add, 4 out × 3 in × 3×3 kernel at each of 8×8 positions; linear: 2 × 256
    assert count_flops(tiny_conv(), 8) == 2 * 4 * 3 * 9 * 64 + 2 * 256


def test_cpu_peak_memory_counts_weights_input_and_live_activations():
    model, x = tiny_conv(), torch.rand(1, 3, 8, 8)
    weights = sum(p.numel() * 4 for p in model.parameters())
    peak, method = peak_memory(model, x)
    # the conv output and the ReLU output (4×8×8 float32 each) are alive together; nothing larger follows
    assert peak == weights + x.numel() * 4 + 2 * 4 * 8 * 8 * 4
    assert method.startswith("cpu:")
    tracker = LiveTensorBytes([*model.parameters(), x])
    with torch.inference_mode(), tracker:
        model(x)
    assert tracker.current < tracker.peak  # freed tensors are subtracted


def test_interleaved_timing_and_percentiles():
    order = []
    times = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, {"a": 3, "b": 1}, {"a": 1, "b": 0})
    assert [len(times["a"]), len(times["b"])] == [3, 1]
    assert order == ["a", "a", "b", "a", "a"]  # warm-up a, round 1 a b, round 2 reversed (b done), round 3
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 10) == pytest.approx(1.4)
    assert percentile([7.0], 90) == 7.0
    # lower latency and higher SRCC win; (3, 0.5) is beaten by (1, 0.6)
    assert pareto_front([(1, 0.6), (3, 0.5), (10, 0.8), (2, 0.7)], maximise_y=True) == [0, 3, 2]


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_bench_writes_csv_markdown_and_plot(toy_recipe, tmp_path, capsys, keep_threads):
    args = ["bench", str(toy_recipe), "--students", "kdiqa_cnn_tiny,mobilenetv3_small_050", "--teacher", "tiny",
            "views.size=32", "--threads", "1", *FAST]
    assert main(args) == 0
    run_dir = tmp_path / "run"
    columns, rows = read_rows(run_dir / "bench.csv")
    assert columns == BENCH_COLUMNS
    assert [r["model"] for r in rows] == ["kdiqa_cnn_tiny", "mobilenetv3_small_050", "teacher dpiqa tiny (random weights)"]
    assert [r["kind"] for r in rows] == ["student", "student", "teacher"]
    for r in rows:
        assert int(r["image_size"]) == 32
        assert float(r["gflops"]) > 0 and int(r["params"]) > 0
        assert 0 < float(r["latency_p10_ms"]) <= float(r["latency_ms"]) <= float(r["latency_p90_ms"])
        assert float(r["throughput_img_s"]) > 0 and float(r["peak_memory_mb"]) > 0
        assert math.isnan(float(r["srcc"]))  # no --distill
    assert [int(r["throughput_batch"]) for r in rows] == [4, 4, 2]
    assert [int(r["latency_repeats"]) for r in rows] == [2, 2, 1]
    assert {r["threads"] for r in rows} == {"1"}  # --threads reached the recipe's `threads`
    # the student row is the registry's student at that size: same parameter count, same FLOPs
    from kdiqa.registry import STUDENTS

    student = STUDENTS.build("timm", backbone="kdiqa_cnn_tiny", head="pooled_mlp", image_size=32)
    assert int(rows[0]["params"]) == count_parameters(student)
    assert float(rows[0]["gflops"]) == pytest.approx(count_flops(student.eval(), 32) / 1e9, rel=1e-5)
    parsed = read_csv(run_dir / "bench.csv")  # typed rows back, e.g. to redraw the table
    assert [(r.model, r.params, r.throughput_batch) for r in parsed] == [
        (r["model"], int(r["params"]), int(r["throughput_batch"])) for r in rows]
    md = (run_dir / "bench.md").read_text()
    assert "| mobilenetv3_small_050 |" in md and "FlopCounterMode" in md and "bench_pareto.png" in md
    assert (run_dir / "bench_pareto.png").stat().st_size > 5000
    assert "| kdiqa_cnn_tiny |" in capsys.readouterr().out


def test_unknown_backbone_is_a_one_line_error(toy_recipe, capsys):
    assert main(["bench", str(toy_recipe), "--students", "kdiqa_cnn_tiny,efficientnet_bO", "--teacher", "none", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown timm backbone 'efficientnet_bO'" in err


def test_distill_needs_a_complete_cache(toy_recipe, capsys):
    assert main(["bench", str(toy_recipe), "--students", "kdiqa_cnn_tiny", "--teacher", "none", "--distill", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no cache here" in err and "kdiqa cache" in err


def test_bench_distill_reports_srcc_and_plots_it(toy_recipe, tmp_path):
    settings = ["distill.features=[{target: quality_map, tap: -1, kind: conv, loss: mse, weight: 1.0}]",
                "cache.views_per_image=1", "cache.batch_size=16", "trainer.max_epochs=1"]
    recipe = load_recipe(toy_recipe, settings)
    run = prepare_run(recipe)
    torch.manual_seed(0)
    TEACHERS.build("toy").save_pretrained(run.teacher)
    stage_cache(recipe, run)
    run_dir = run.root
    args = ["bench", str(toy_recipe), *settings, "--students", "kdiqa_cnn_tiny", "--teacher", "trained", "--distill", *FAST]
    assert main(args) == 0
    _, rows = read_rows(run_dir / "bench.csv")
    assert [r["model"] for r in rows] == ["KD student kdiqa_cnn_tiny", "teacher toy (trained)"]
    assert -1 <= float(rows[0]["srcc"]) <= 1 and -1 <= float(rows[0]["plcc"]) <= 1
    assert (run_dir / "bench" / "kdiqa_cnn_tiny" / "students" / "kd" / "model.safetensors").is_file()
    assert "SRCC vs latency" in (run_dir / "bench.md").read_text()
