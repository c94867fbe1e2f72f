"""Teachers kdiqa did not train: any pyiqa metric (``pyiqa``) and any ONNX model (``onnx``).

Importing registers both; neither imports its runtime (pyiqa, onnxruntime) until a teacher is built,
so kdiqa works without them and says in one line what to install when one is asked for.
"""
from kdiqa.teachers.external.common import ScoreScale, parse_score_range
from kdiqa.teachers.external.offline import MissingFileError, no_downloads
from kdiqa.teachers.external.onnx_model import OnnxTeacher
from kdiqa.teachers.external.pyiqa_metric import PyIQATeacher

__all__ = ["MissingFileError", "OnnxTeacher", "PyIQATeacher", "ScoreScale", "no_downloads", "parse_score_range"]
