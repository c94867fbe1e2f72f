"""TANet theme-aware aesthetics teacher; importing registers ``tanet`` in TEACHERS."""
from kdiqa.teachers.tanet.model import TANetTeacher, describe
from kdiqa.teachers.tanet.official import map_official_state, official_key

__all__ = ["TANetTeacher", "describe", "map_official_state", "official_key"]
