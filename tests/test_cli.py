"""The command line as a user meets it: one-line errors, exit codes, data info."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from kdiqa.cli.main import main


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def csv_recipe(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    lines = ["path,mos"]
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
        lines.append(f"imgs/{i}.png,{1 + 4 * i / 19:.3f}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: t
        out: {tmp_path / "run"}
        data: {{name: csv, root: {tmp_path}, options: {{mos_range: [1, 5]}}}}
    """))
    return recipe


def test_data_info_prints_summary(csv_recipe, capsys):
    code, out, err = run_cli(["data", "info", str(csv_recipe), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["name"] == "csv"
    assert summary["all"]["count"] == 20
    assert sum(summary[s]["count"] for s in ("train", "val", "test")) == 20
    assert (summary["all"]["mos_raw_min"], summary["all"]["mos_raw_max"]) == (1.0, 5.0)
    code, out, err = run_cli(["data", "info", str(csv_recipe)], capsys)
    assert code == 0 and "dataset csv" in out and "train" in out


def test_user_errors_are_one_line_exit_2(csv_recipe, tmp_path, capsys):
    cases = [
        (["data", "info", str(csv_recipe), "trainer.max_epoch=1"], "unknown key 'trainer.max_epoch'"),
        (["data", "info", str(tmp_path / "missing.yaml")], "not found"),
        (["data", "info", str(csv_recipe), "data.name=konik10k"], "unknown datasets 'konik10k'; did you mean 'koniq10k'"),
        (["data", "info", str(csv_recipe), f"data.root={tmp_path / 'nowhere'}"], "nowhere"),
        (["run", str(csv_recipe), "stages=[dat]"], "unknown stage 'dat'; did you mean 'data'"),
        (["eval", str(csv_recipe), "--checkpoint", str(tmp_path)], "no saved model here"),
    ]
    for args, fragment in cases:
        code, out, err = run_cli(args, capsys)
        assert code == 2, (args, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kdiqa: error: "), (args, err)
        assert fragment in lines[0], (args, err)


def test_debug_shows_the_traceback(csv_recipe):
    proc = subprocess.run(
        [sys.executable, "-m", "kdiqa.cli.main", "data", "info", str(csv_recipe), "data.name=nope", "--debug"],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "RegistryError" in proc.stderr


def test_run_data_stage_writes_run_folder(csv_recipe, tmp_path, capsys):
    code, out, err = run_cli(["run", str(csv_recipe), "--stages", "data", "--seed", "3"], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    assert (run / "recipe.yaml").is_file() and "seed: 3" in (run / "recipe.yaml").read_text()
    assert json.loads((run / "data.json").read_text())["name"] == "csv"


def test_help_on_each_subcommand(capsys):
    for cmd in (["run"], ["fit-teacher"], ["eval"], ["data", "info"], ["data", "make-mini"], ["info"]):
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: kdiqa" in capsys.readouterr().out
