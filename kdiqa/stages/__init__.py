"""The stages a recipe chains (``stages: [...]``) and the CLI runs one by one (``distill+baseline``: side by side).

Each stage takes the resolved recipe and its run folder (:class:`kdiqa.run.RunDir`), writes its
outputs there and returns a small summary; later stages find earlier outputs in the same folder, so
any stage can be rerun.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from kdiqa.config import Recipe
from kdiqa.errors import ConfigError
from kdiqa.stages.cache import stage_cache
from kdiqa.stages.data import stage_data
from kdiqa.stages.distill import stage_baseline, stage_distill
from kdiqa.stages.eval import stage_eval
from kdiqa.stages.fit_teacher import stage_fit_teacher
from kdiqa.stages.report import stage_report
from kdiqa.stages.side_by_side import SEPARATOR, check_group

STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "data": stage_data,
    "fit_teacher": stage_fit_teacher,
    "cache": stage_cache,
    "distill": stage_distill,
    "baseline": stage_baseline,
    "report": stage_report,
    "eval": stage_eval,
}


def check_stages(entries: list[str], recipe: Recipe | None = None) -> list[list[str]]:
    """The stage list as groups of names, each name known; ``a+b`` runs stages a and b side by side
    (:mod:`kdiqa.stages.side_by_side`), a group of one runs alone."""
    groups = [entry.split(SEPARATOR) for entry in entries]
    for names in groups:
        for name in names:
            _check_name(name)
        if len(names) > 1:
            check_group(names, recipe)
    return groups


def _check_name(name: str) -> None:
    if name not in STAGES:
        close = difflib.get_close_matches(name, list(STAGES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"stages: unknown stage {name!r}{hint} (known: {', '.join(STAGES)})")
