import textwrap

import pytest
import torch

from kdiqa.config import load_recipe, recipe_to_yaml, save_recipe
from kdiqa.errors import ConfigError
from kdiqa.run import teacher_threads


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


# Each recipe value is validated once, at load (kdiqa/config/schema.py); these checks were also made, a
# second time, by the code that receives the values (splits, format loaders, view sampler, cache writer).
def test_bad_on_bad_row_value(recipes):
    for name in ("koniq10k", "csv", "livec"):
        with pytest.raises(ConfigError, match="data.on_bad_row: 'ignore' is not one of 'error', 'skip'"):
            load_recipe(recipes / "child.yaml", [f"data.name={name}", "data.on_bad_row=ignore"])


def test_ratio_validation(recipes):
    for bad, message in [
        ("[0.7,0.2,0.2]", "must sum to 1"),
        ("[0.8,0.2]", "three numbers"),
        ("[1.2,-0.1,-0.1]", ">= 0"),
        ("[.nan,0.5,0.5]", "finite"),
        ("[0.0,0.5,0.5]", "nothing to train on"),
        ("0.7,0.1,0.2", "key 'data.split.ratios': Invalid value assigned"),  # not a list
    ]:
        with pytest.raises(ConfigError, match=message):
            load_recipe(recipes / "child.yaml", ["data.split.policy=random", f"data.split.ratios={bad}"])


def test_split_policy_seed_and_repeat_validation(recipes):
    for override, message in [
        ("data.split.policy=stratified", "data.split.policy: 'stratified' is not one of 'auto', 'official', 'random'"),
        ("data.split.repeat=-1", r"data.split.repeat: must be >= 0, got -1"),
        ("data.split.seed=-1", r"data.split.seed: must be >= 0, got -1"),
        ("data.split.seed=1.5", r"key 'data.split.seed'.*could not be converted to Integer"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_recipe(recipes / "child.yaml", [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("views.train_scale=[0.0,0.5]", "views.train_scale: need finite"),
        ("views.train_scale=[0.5,1.5]", "views.train_scale: the high end must be <= 1"),
        ("views.train_scale=[0.8,0.2]", "views.train_scale: need finite"),
        ("views.train_ratio=[0.0,1.0]", "views.train_ratio: need finite"),
        ("views.train_ratio=[1.0,.inf]", "views.train_ratio: need finite"),
        ("views.train_ratio=wide", "key 'views.train_ratio'"),
    ],
)
def test_view_scale_and_ratio_are_validated(recipes, override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipes / "child.yaml", [override])


def test_cache_pool_sizes_are_validated(recipes):
    base = ["cache.features=[quality_map, embedding]"]
    with pytest.raises(ConfigError, match=r"cache.pool.quality_map: need a positive int or \[height, width\], got 0"):
        load_recipe(recipes / "child.yaml", [*base, "cache.pool={quality_map: 0}"])
    assert load_recipe(recipes / "child.yaml", [*base, "cache.pool={quality_map: [2, 3]}"]).cache.pool == {"quality_map": [2, 3]}


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


# ----------------------------------------------------------------------------- issue 14
def test_a_key_can_be_removed_as_hydra_users_expect(recipes):
    write(recipes / "data.yaml", """
        base: [base.yaml]
        data: {options: {n_train: 800, crop: 64}}
    """)
    assert load_recipe(recipes / "data.yaml").data.options == {"n_train": 800, "crop": 64}
    # merging {} keeps what a base set; removing the key first replaces it
    assert load_recipe(recipes / "data.yaml", ["data.options={}"]).data.options == {"n_train": 800, "crop": 64}
    assert load_recipe(recipes / "data.yaml", ["~data.options.n_train"]).data.options == {"crop": 64}
    assert load_recipe(recipes / "data.yaml", ["~data.options", "data.options={file: x.csv}"]).data.options == {"file": "x.csv"}
    assert load_recipe(recipes / "data.yaml", ["~data.options.n_train=800"]).data.options == {"crop": 64}
    # a schema key goes back to its default
    assert load_recipe(recipes / "data.yaml", ["~trainer.max_epochs"]).trainer.max_epochs == 30
    with pytest.raises(ConfigError, match=r"'data.options.n_train' is 800, not '5'; nothing removed"):
        load_recipe(recipes / "data.yaml", ["~data.options.n_train=5"])
    with pytest.raises(ConfigError, match=r"override '~data.options.nope': there is no key 'data.options.nope' to remove"):
        load_recipe(recipes / "data.yaml", ["~data.options.nope"])


def test_an_unfilled_required_value_fails_at_load_naming_the_key(tmp_path):
    """`???` on a key with a default (teacher.checkpoint: None) used to load as that default."""
    write(tmp_path / "r.yaml", """
        data: {name: csv, root: /data}
        teacher:
          checkpoint: ???
    """)
    with pytest.raises(ConfigError, match=r"r.yaml: missing required value 'teacher.checkpoint' \(give it on the command line"):
        load_recipe(tmp_path / "r.yaml")
    assert load_recipe(tmp_path / "r.yaml", ["teacher.checkpoint=/models/t"]).teacher.checkpoint == "/models/t"
    # a command that only reads the data does not need it
    assert load_recipe(tmp_path / "r.yaml", needs=("data", "views")).teacher.checkpoint is None
    # looking for ??? resolves nothing: an interpolation of a schema default still works
    write(tmp_path / "i.yaml", "name: run-${views.size}\ndata: {name: csv}\n")
    assert load_recipe(tmp_path / "i.yaml").name == "run-64"
    # the released recipes ask for both of theirs
    with pytest.raises(ConfigError, match="missing required value 'data.root'"):
        load_recipe("dpiqa/released_koniq10k", ["teacher.checkpoint=/m"])
    with pytest.raises(ConfigError, match="missing required value 'teacher.checkpoint'"):
        load_recipe("dpiqa/released_koniq10k", ["data.root=/d"])


@pytest.mark.parametrize("override", ["trainer.precision=99", "teacher.fit.trainer={precision: 99}", "distill.fit.trainer={precision: fp8}"])
def test_precision_is_checked_at_load(recipes, override):
    with pytest.raises(ConfigError, match=r"trainer.precision: '(99|fp8)' is not one of '32-true', '16-mixed'"):
        load_recipe(recipes / "child.yaml", [override])
    for ok in ("trainer.precision=16", "trainer.precision=bf16-mixed", "distill.fit.trainer={precision: 32}"):
        load_recipe(recipes / "child.yaml", [ok])


def test_a_stage_trainer_key_is_checked_at_load(recipes):
    with pytest.raises(ConfigError, match=r"unknown key 'distill.fit.trainer.max_epoch'; did you mean 'distill.fit.trainer.max_epochs'"):
        load_recipe(recipes / "child.yaml", ["distill.fit.trainer={max_epoch: 2}"])


def test_teacher_threads_apply_while_the_teacher_scores_and_are_restored():
    with pytest.raises(ConfigError, match=r"teacher\.threads: must be > 0"):
        load_recipe("quickstart", ["teacher.threads=0"])
    recipe = load_recipe("quickstart", ["teacher.threads=2"])
    before = torch.get_num_threads()
    with teacher_threads(recipe):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with teacher_threads(load_recipe("quickstart", ["teacher.threads=null"])):
        assert torch.get_num_threads() == before  # unset: the recipe's `threads` stay
