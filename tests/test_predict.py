"""``kdiqa predict`` at folder scale: workers and batches score as one image at a time, JPEG draft decoding
stays at least twice the model's input, ``--resume`` continues an interrupted output without rescoring,
the output has its final name only when complete, and the command imports neither Lightning nor diffusers."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kdiqa.predict as predict_module
from kdiqa.cli.main import main
from kdiqa.data.images import load_image
from kdiqa.data.views import ViewSampler
from kdiqa.errors import KdiqaError
from kdiqa.predict import DRAFT_MARGIN, predict, predict_paths
from kdiqa.predictions import partial_path, record_path
from kdiqa.registry import STUDENTS
from kdiqa.students.base import Student

SIZE = 16


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = STUDENTS.build("timm", image_size=SIZE, backbone="kdiqa_cnn_small", head="pooled_mlp")
    with torch.no_grad():  # random weights score every image alike to 1e-4: spread them so that a swap shows
        model.head.mlp[-1].weight.mul_(1000)
    return model.save_pretrained(tmp_path_factory.mktemp("student") / "kd")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Nine JPEGs and PNGs of assorted sizes (some large enough for draft decoding), and one broken file."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    sizes = [(200, 150), (64, 48), (150, 200), (40, 30), (256, 192), (33, 33), (120, 90), (300, 100), (90, 120)]
    for i, (w, h) in enumerate(sizes):
        smooth = Image.fromarray(rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
        smooth.save(root / f"{i:02d}.{'png' if i % 3 == 1 else 'jpg'}", quality=90)
    (root / "04_broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


class Counting:
    """A model that counts the images it scores, and can stop the run (Ctrl-C) at a given call."""

    def __init__(self, model, interrupt_at: int | None = None):
        self.model, self.interrupt_at = model, interrupt_at
        self.config = model.config
        self.calls = self.images = 0

    def __call__(self, x):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.images += len(x)
        return self.model(x)


def counting(monkeypatch, student, interrupt_at=None) -> Counting:
    model = Counting(Student.from_pretrained(student).eval(), interrupt_at)
    monkeypatch.setattr(predict_module, "load_scorer", lambda path: (model, torch.device("cpu")))
    return model


def test_workers_and_batches_score_as_one_image_at_a_time(student, folder, tmp_path):
    out = tmp_path / "scores.csv"
    assert main(["predict", str(folder), "--model", str(student), "--output", str(out), "--batch-size", "3", "--workers", "2"]) == 0
    one_by_one = predict_paths(student, [folder], batch_size=1, workers=0)
    lines = out.read_text().splitlines()
    assert lines[0] == "path,score,error" and len(lines) == 11
    assert [line.split(",")[0] for line in lines[1:]] == [r["path"] for r in one_by_one] == sorted(r["path"] for r in one_by_one)
    for line, row in zip(lines[1:], one_by_one, strict=True):
        score = line.split(",")[1]
        assert (score == "") == (row["score"] is None) and (not score or float(score) == pytest.approx(row["score"], rel=1e-6))
    assert [r["path"] for r in one_by_one if r["score"] is None] == [str(folder / "04_broken.jpg")]
    assert not partial_path(out).exists() and not record_path(out).exists()


def test_without_draft_the_scores_are_the_models_on_its_eval_view(student, folder):
    sampler = ViewSampler(SIZE, train=False)
    model = Student.from_pretrained(student).eval()
    rows = [r for r in predict_paths(student, [folder], batch_size=16, draft=False) if r["score"] is not None]
    with torch.no_grad():
        expected = model(torch.stack([sampler.apply(load_image(r["path"]), sampler.eval_params()) for r in rows]))["score"]
    assert torch.equal(torch.tensor([r["score"] for r in rows]), expected)  # one batch of the same views: bit for bit
    drafted = [r["score"] for r in predict_paths(student, [folder], batch_size=16) if r["score"] is not None]
    assert drafted != [r["score"] for r in rows]  # the large JPEGs were drafted (the small ones and PNGs not)


def test_draft_decodes_a_jpeg_smaller_but_at_least_the_size_asked_upright(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (256, 192), (90, 120, 30)).save(path, quality=90)
    assert load_image(path, reduce_to=(32, 32)).size == (64, 48)  # 1/4: 1/8 would give 32x24, under 32 high
    assert load_image(path).size == (256, 192)
    sideways = tmp_path / "sideways.jpg"  # stored 256x192, shown 192x256 (EXIF orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (256, 192), (90, 120, 30)).save(sideways, quality=90, exif=exif)
    assert load_image(sideways, reduce_to=(40, 60)).size == (48, 64)  # 1/4, asked as 60x40 of the stored image
    png = tmp_path / "big.png"
    Image.new("RGB", (256, 192)).save(png)
    assert load_image(png, reduce_to=(32, 32)).size == (256, 192)  # only JPEG decoders scale
    assert DRAFT_MARGIN >= 2


def test_resume_continues_an_interrupted_output_without_rescoring(student, folder, tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference.csv"
    predict(student, [folder], reference, batch_size=2, workers=0)
    out = tmp_path / "scores.csv"
    first = counting(monkeypatch, student, interrupt_at=3)  # two batches (four images) scored, then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        predict(student, [folder], out, batch_size=2, workers=0)
    assert not out.exists() and first.images == 4
    partial = partial_path(out)
    kept = partial.read_text().splitlines()
    assert len(kept) == 1 + 4  # the header and the two batches, flushed as they came
    with open(partial, "a") as f:
        f.write(f"{folder / '09_torn'},0.12")  # a write cut short: no newline

    # without --resume the unfinished file is refused, not overwritten
    assert main(["predict", str(folder), "--model", str(student), "--output", str(out)]) == 2
    assert "pass --resume" in capsys.readouterr().err and partial.read_text().startswith("\n".join(kept))
    # with another model it is refused too
    with pytest.raises(KdiqaError, match="was started with model"):
        predict(folder, [folder], out, resume=True, workers=0)

    second = counting(monkeypatch, student)
    summary = predict(student, [folder], out, batch_size=2, workers=0, resume=True)
    assert second.images == 5  # the five readable images left: none of the four done is scored twice
    assert out.read_bytes() == reference.read_bytes()
    assert (summary.rows, summary.resumed, summary.scored) == (10, 4, 9)
    assert not partial.exists() and not record_path(out).exists()
    assert "dropped a torn last line" in capsys.readouterr().err


def test_resume_through_the_cli_after_ctrl_c_with_a_folder_listed_twice_and_json(student, folder, tmp_path, monkeypatch, capsys):
    reference = predict_paths(student, [folder, folder], batch_size=4)
    out = tmp_path / "scores.json"
    args = ["predict", str(folder), str(folder), "--model", str(student), "--output", str(out), "--batch-size", "4"]
    counting(monkeypatch, student, interrupt_at=2)
    assert main([*args, "--workers", "0"]) == 130
    assert not out.exists() and len(partial_path(out).read_text().splitlines()) == 1 + 4
    assert "4 rows kept in" in capsys.readouterr().err
    model = counting(monkeypatch, student)
    assert main([*args, "--resume"]) == 0
    assert model.images == 2 * 9 - 4 and not partial_path(out).exists()  # each listing of a done path is done once
    rows = json.loads(out.read_text())
    assert [r["path"] for r in rows] == [r["path"] for r in reference] and len(rows) == 20
    assert all(a["score"] == pytest.approx(b["score"], rel=1e-6) for a, b in zip(rows, reference, strict=True) if b["score"] is not None)
    # resuming a finished output scores nothing
    assert main([*args, "--resume"]) == 0
    assert model.images == 2 * 9 - 4


def test_predict_imports_neither_lightning_nor_diffusers(student, folder, tmp_path):
    """What ``kdiqa predict`` imports, in a fresh interpreter: scoring needs no training stack."""
    code = textwrap.dedent(f"""
        import sys
        from kdiqa.cli.main import main
        assert main(["predict", {str(folder)!r}, "--model", {str(student)!r}, "--output", {str(tmp_path / 's.csv')!r}]) == 0
        import kdiqa.models, kdiqa.modeling, kdiqa.students, kdiqa.exported, kdiqa.predict
        print(sorted(m for m in ("pytorch_lightning", "lightning", "lightning_fabric", "diffusers", "transformers")
                     if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 11


@pytest.mark.parametrize("option,fragment", [(["--size", "0"], "size must be positive"), (["--batch-size", "0"], "--batch-size"),
                                             (["--workers", "-1"], "--workers")])
def test_a_run_that_fails_before_its_first_row_leaves_nothing_to_resume(student, folder, tmp_path, capsys, option, fragment):
    out = tmp_path / "scores.csv"
    assert main(["predict", str(folder), "--model", str(student), "--output", str(out), *option]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdiqa: error:") and "\n" not in err and fragment in err
    assert not any(tmp_path.iterdir())  # no partial file, no record: a rerun needs no --resume
