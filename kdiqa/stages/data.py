"""The data stage (the dataset's summary, ``data.json``) and the data module every stage builds."""
from __future__ import annotations

import dataclasses
from typing import Any

from kdiqa.config import Recipe
from kdiqa.config.schema import FitConfig
from kdiqa.data.datamodule import IQADataModule
from kdiqa.io import write_json
from kdiqa.run import RunDir


def data_module(recipe: Recipe, fit: FitConfig | None = None) -> IQADataModule:
    """The recipe's data, with a stage's own training batch size (``<stage>.fit.batch_size``: teachers
    and students differ) when ``fit`` gives one."""
    data = recipe.data
    if fit is not None and fit.batch_size is not None:
        data = dataclasses.replace(data, batch_size=fit.batch_size)
    return IQADataModule(data, recipe.views)


def stage_data(recipe: Recipe, run: RunDir) -> dict[str, Any]:
    summary = data_module(recipe).summary()
    write_json(run.data_summary, summary)
    return summary
