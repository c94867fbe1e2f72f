"""The stages a recipe chains (``stages: [...]``) and the CLI runs one by one.

Each stage takes the resolved recipe and its run folder (:class:`kdiqa.run.RunDir`), writes its
outputs there and returns a small summary; later stages find earlier outputs in the same folder, so
any stage can be rerun.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from kdiqa.errors import ConfigError
from kdiqa.stages.cache import stage_cache
from kdiqa.stages.data import stage_data
from kdiqa.stages.distill import stage_baseline, stage_distill
from kdiqa.stages.eval import stage_eval
from kdiqa.stages.fit_teacher import stage_fit_teacher
from kdiqa.stages.report import stage_report

STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "data": stage_data,
    "fit_teacher": stage_fit_teacher,
    "cache": stage_cache,
    "distill": stage_distill,
    "baseline": stage_baseline,
    "report": stage_report,
    "eval": stage_eval,
}


def check_stages(names: list[str]) -> None:
    for name in names:
        if name not in STAGES:
            close = difflib.get_close_matches(name, list(STAGES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"stages: unknown stage {name!r}{hint} (known: {', '.join(STAGES)})")
