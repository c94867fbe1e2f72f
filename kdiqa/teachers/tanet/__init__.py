"""TANet theme-aware aesthetics teacher; importing registers ``tanet`` in TEACHERS."""
from kdiqa.teachers.tanet.mobilenet import official_mobilenet_v2_features
from kdiqa.teachers.tanet.model import BATCH_MODES, PRESETS, TASKS, TANetTeacher, ThemeBranch, describe, rgb_attention
from kdiqa.teachers.tanet.official import OFFICIAL_PREFIXES, RESIDUAL_LAYERS, map_official_state, official_key

__all__ = [
    "BATCH_MODES",
    "OFFICIAL_PREFIXES",
    "PRESETS",
    "RESIDUAL_LAYERS",
    "TASKS",
    "TANetTeacher",
    "ThemeBranch",
    "describe",
    "map_official_state",
    "official_key",
    "official_mobilenet_v2_features",
    "rgb_attention",
]
