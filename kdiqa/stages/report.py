"""The report stage: report.md, plots and the summary table over every model this run produced."""
from __future__ import annotations

from typing import Any

from kdiqa.config import Recipe
from kdiqa.io import read_json
from kdiqa.measure import count_parameters, default_device, measure_latency
from kdiqa.modeling import CONFIG_NAME
from kdiqa.models import load_model
from kdiqa.report import ModelInfo, write_report
from kdiqa.run import RunDir
from kdiqa.stages.distill import BASELINE, KD


def stage_report(recipe: Recipe, run: RunDir) -> dict[str, Any]:
    student = recipe.student.options.get("backbone", recipe.student.name)
    candidates = [
        (f"teacher ({recipe.teacher.name})", "teacher", run.teacher),
        (f"KD student ({student})", f"student_{KD}", run.student(KD)),
        (f"label-only student ({student})", f"student_{BASELINE}", run.student(BASELINE)),
    ]
    device = str(default_device())
    models = []
    timed: dict[str, tuple[float, float]] = {}  # one measurement per architecture: KD and label-only share it
    for label, key, path in candidates:
        if (path / CONFIG_NAME).is_file():
            model = load_model(path)
            params = count_parameters(model)
            architecture = f"{type(model).__name__}:{params}:{read_json(path / CONFIG_NAME).get('config')}"
            if architecture not in timed:
                timed[architecture] = measure_latency(model, recipe.views.size, device=device)
            median, spread = timed[architecture]
            models.append(ModelInfo(label, key, params, median, spread))
    table = write_report(run, models, title=f"kdiqa report: {recipe.name}")
    print(table)
    return {"report": str(run.report), "models": [m.key for m in models]}
