"""Teachers kdiqa did not train: any pyiqa metric (``pyiqa``) and any ONNX model (``onnx``).

Importing registers both; neither imports its runtime (pyiqa, onnxruntime) until a teacher is built,
so kdiqa works without them and says in one line what to install when one is asked for.
"""
from kdiqa.teachers.external.common import FeatureTaps, ScoreScale, parse_score_range
from kdiqa.teachers.external.offline import Guard, MissingFileError, no_downloads
from kdiqa.teachers.external.onnx_model import OnnxTeacher
from kdiqa.teachers.external.pyiqa_metric import PyIQATeacher, build_metric, require_pyiqa

__all__ = [
    "FeatureTaps",
    "Guard",
    "MissingFileError",
    "OnnxTeacher",
    "PyIQATeacher",
    "ScoreScale",
    "build_metric",
    "no_downloads",
    "parse_score_range",
    "require_pyiqa",
]
