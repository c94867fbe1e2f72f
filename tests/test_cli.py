"""The command line as a user meets it: one-line errors, exit codes, data info."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

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


@pytest.mark.slow
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


# ----------------------------------------------------------------------------- issue 14
def test_data_info_with_an_empty_split(csv_recipe, capsys):
    code, out, err = run_cli(["data", "info", str(csv_recipe), "data.split.ratios=[1.0,0.0,0.0]"], capsys)
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert rows["train"][0] == "20" and rows["val"] == ["0", "-", "-"] and rows["test"] == ["0", "-", "-"]


def test_a_csv_with_a_header_and_no_rows_names_the_file(csv_recipe, tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("path,mos\n")
    code, _, err = run_cli(["data", "info", str(csv_recipe)], capsys)
    assert code == 2 and f"{tmp_path / 'labels.csv'}: has a header row but no data rows" in err


def test_cache_takes_overrides_after_its_options(csv_recipe, tmp_path, capsys):
    """`kdiqa cache RECIPE -o OUT key=value` as `run` and `distill` take it (the recipe has no teacher yet)."""
    code, _, err = run_cli(["cache", str(csv_recipe), "-o", str(tmp_path / "out"), "cache.views_per_image=1", "~data.options"], capsys)
    assert code == 2 and "unrecognized arguments" not in err and "no saved model here" in err
    saved = (tmp_path / "out" / "recipe.yaml").read_text()
    assert "views_per_image: 1" in saved and "mos_range" not in saved


def test_cache_merge_force_replaces_another_cache(tmp_path, capsys):
    from test_cache import build, make_samples

    samples = make_samples(tmp_path / "images", 6)
    path = tmp_path / "c.h5"
    for i in range(2):
        build(path, samples, shard=(i, 2))
    build(path, samples, seed=99)  # a different, complete cache where the merged one goes
    code, _, err = run_cli(["cache", "merge", str(path)], capsys)
    assert code == 2 and "pass --force" in err
    code, out, err = run_cli(["cache", "merge", str(path), "--force"], capsys)
    assert code == 0, err
    assert "merged      2 shards" in out


def test_accelerate_is_a_dependency():
    from importlib.metadata import requires

    assert any(r.split(">")[0].split("=")[0].strip() == "accelerate" for r in requires("kdiqa") or [])


def test_third_party_chatter_is_silenced_unless_verbose():
    import warnings

    from kdiqa.console import setup_console

    chatter = ["Found 154 module(s) in eval mode at the start of training. This may lead to unexpected behavior",
               "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead.",
               "The 'train_dataloader' does not have many workers which may be a bottleneck."]
    for verbose, expected in ((False, 0), (True, len(chatter))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            setup_console(verbose=verbose)
            for message in chatter:
                warnings.warn(message, UserWarning, stacklevel=1)
        assert len(caught) == expected


@pytest.mark.slow
def test_the_console_shows_kdiqa_lines_and_plain_progress_but_no_chatter(toy_recipe, tmp_path):
    """Run as a user would, output to a file (not a terminal): no Lightning tips, hardware lines or
    library warnings with file paths, plain progress lines instead of a bar; --verbose leaves the
    libraries' own output as it is. One process runs both (a fresh interpreter: pytest's own logging
    and warning capture would hide what a user sees)."""
    args = ["fit-teacher", str(toy_recipe), "trainer.max_epochs=2", "trainer.progress_bar=true"]
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import conftest
        from kdiqa.cli.main import main
        args = {args!r}
        assert main([*args, "-o", {str(tmp_path / "quiet")!r}]) == 0
        print("=== verbose", file=sys.stderr, flush=True)
        assert main([*args, "-o", {str(tmp_path / "verbose")!r}, "--verbose"]) == 0
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    quiet_err, verbose_err = proc.stderr.split("=== verbose")
    quiet = proc.stdout.split("run folder:")[0] + quiet_err
    for noise in ("GPU available", "litlogger", "LeafSpec", "Loading `train_dataloader`", "Trainer.fit` stopped", "site-packages"):
        assert noise not in quiet, quiet
    assert "teacher: epoch 1/2 step" in quiet and "val/srcc" in quiet and "teacher: done" in quiet
    # the one library warning left (actionable: log_every_n_steps) is a line of its own
    assert "warning: The number of training batches (3) is smaller than the logging interval" in quiet
    assert "GPU available" in verbose_err and "litlogger" in verbose_err
