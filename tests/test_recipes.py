"""Every shipped recipe loads and validates (with the user-supplied paths filled in)."""
from pathlib import Path

import pytest

from kdiqa.config import load_recipe
from kdiqa.config.loader import RECIPES_DIR
from kdiqa.errors import ConfigError
from kdiqa.stages import check_stages

PATHS = ["data.root=/data/x", "teacher.options.sd_checkpoint=/models/sd15", "teacher.checkpoint=/runs/teacher",
         "teacher.options.theme_weights=/models/places365.pth", "teacher.options.weights=/models/metric.pth",
         "teacher.options.path=/models/teacher.onnx"]
RECIPES = sorted(p for p in RECIPES_DIR.rglob("*.yaml"))


def _fill(recipe: Path) -> list[str]:
    """Only the overrides for keys the recipe leaves required (???)."""
    text = recipe.read_text()
    for base in recipe.parent.glob("_*.yaml"):
        text += base.read_text()
    return [p for p in PATHS if p.split("=")[0].split(".")[-1] in text]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(RECIPES_DIR)))
def test_recipe_loads(recipe):
    if recipe.name.startswith("_"):
        pytest.skip("a base recipe, completed by the recipes that include it")
    try:
        r = load_recipe(recipe, _fill(recipe))
    except ConfigError as exc:
        if "missing required value" in str(exc):
            pytest.fail(f"{recipe}: {exc} (add it to PATHS if it is a path the user supplies)")
        raise
    check_stages(r.stages)
    assert r.name and r.data.name


def test_official_recipes_follow_the_paper():
    teacher = load_recipe("dpiqa/koniq10k.yaml", ["data.root=/d", "teacher.options.sd_checkpoint=/m"])
    assert (teacher.teacher.fit.optim.lr, teacher.data.batch_size, teacher.trainer.max_epochs) == (1e-5, 16, 30)
    assert teacher.teacher.fit.optim.gamma == 0.2 and teacher.views.size == 512
    student = load_recipe("distill/koniq10k.yaml", ["data.root=/d", "teacher.checkpoint=/t"])
    assert student.student.options["backbone"] == "efficientnet_b7"
    assert (student.distill.fit.optim.lr, student.data.batch_size, student.trainer.max_epochs) == (1e-4, 24, 30)
    assert [(p.target, p.kind, p.loss) for p in student.distill.features] == [("quality_map", "official", "mse")]
