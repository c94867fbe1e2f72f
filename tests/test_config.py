import textwrap

import pytest

from kdiqa.config import load_recipe, recipe_to_yaml, save_recipe
from kdiqa.errors import ConfigError


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def recipes(tmp_path):
    write(tmp_path / "base.yaml", """
        name: base
        data: {name: csv, root: /data/x}
        trainer: {max_epochs: 3}
        teacher: {options: {preset: tiny}}
    """)
    write(tmp_path / "child.yaml", """
        base: [base.yaml]
        name: child
        trainer: {max_epochs: 5}
    """)
    return tmp_path


def test_base_merge_interpolation_and_overrides(recipes):
    r = load_recipe(recipes / "child.yaml", ["data.batch_size=8", "teacher.options.channels=[8,16]"])
    assert r.name == "child"
    assert r.out == "runs/child"  # ${name} interpolation resolved
    assert r.trainer.max_epochs == 5  # child wins over base
    assert r.data.root == "/data/x"  # inherited
    assert r.data.batch_size == 8
    assert r.teacher.options == {"preset": "tiny", "channels": [8, 16]}
    assert r.base == [str((recipes / "base.yaml").resolve())]


def test_saved_recipe_reloads_identically(recipes, tmp_path):
    r = load_recipe(recipes / "child.yaml")
    out = save_recipe(r, tmp_path / "run" / "recipe.yaml")
    again = load_recipe(out)
    assert recipe_to_yaml(again).replace(str(out), "") == recipe_to_yaml(r).replace(str(out), "")


@pytest.mark.parametrize(
    "override, message",
    [
        (["trainer.max_epoch=2"], r"unknown key 'trainer.max_epoch'; did you mean 'trainer.max_epochs'"),
        (["trainer.max_epochs=many"], r"key 'trainer.max_epochs'.*could not be converted to Integer"),
        (["data.split.ratios=[0.5,0.2,0.2]"], r"data.split.ratios: need three non-negative"),
        (["teacher.fit.optim.scheduler=linear"], r"teacher.fit.optim.scheduler: 'linear' is not one of"),
        (["data.on_bad_row=ignore"], r"data.on_bad_row: 'ignore' is not one of 'error', 'skip'"),
        (["views.train_scale=[0.5,2.0]"], r"views.train_scale: the high end must be <= 1"),
        (["no_equals_sign"], r"override 'no_equals_sign': expected key=value"),
        (["teacher.fit.losses=[{weight: 1.0}]"], r"missing required value 'teacher.fit.losses\[0\].name'|teacher.fit.losses"),
    ],
)
def test_bad_values_name_the_key(recipes, override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipes / "child.yaml", override)


def test_missing_required_value(tmp_path):
    write(tmp_path / "r.yaml", "name: r\n")
    with pytest.raises(ConfigError, match=r"missing required value 'data.name'"):
        load_recipe(tmp_path / "r.yaml")


def test_unknown_key_in_file_names_the_file(tmp_path):
    p = write(tmp_path / "r.yaml", "data: {name: csv, bach_size: 3}\n")
    with pytest.raises(ConfigError, match=rf"{p}: unknown key 'data.bach_size'; did you mean 'data.batch_size'"):
        load_recipe(p)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = write(tmp_path / "r.yaml", "data:\n  name: csv\n  root: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{p}: line \d+ not valid YAML"):
        load_recipe(p)


def test_yaml_tags_cannot_construct_objects(tmp_path):
    p = write(tmp_path / "r.yaml", "data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(p)


def test_base_cycle_detected(tmp_path):
    write(tmp_path / "a.yaml", "base: [b.yaml]\n")
    write(tmp_path / "b.yaml", "base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_missing_recipe_and_missing_base(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe '.*nope.yaml' not found"):
        load_recipe(tmp_path / "nope.yaml")
    write(tmp_path / "r.yaml", "base: [gone.yaml]\ndata: {name: csv}\n")
    with pytest.raises(ConfigError, match="recipe 'gone.yaml' not found"):
        load_recipe(tmp_path / "r.yaml")


def test_recipe_not_a_mapping(tmp_path):
    p = write(tmp_path / "r.yaml", "- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_recipe(p)
