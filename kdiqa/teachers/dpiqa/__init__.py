"""DP-IQA teacher (Stable Diffusion features for IQA); importing registers ``dpiqa`` in TEACHERS."""
from kdiqa.teachers.dpiqa.adapters import build_prompts, encode_prompts, read_prompt_embeddings, save_prompt_embeddings
from kdiqa.teachers.dpiqa.loading import detect_family, load_stable_diffusion
from kdiqa.teachers.dpiqa.model import DPIQATeacher, describe
from kdiqa.teachers.dpiqa.presets import PRESET_NAMES, get_preset, packaged_config_dir

__all__ = ["DPIQATeacher", "PRESET_NAMES", "build_prompts", "describe", "detect_family", "encode_prompts", "get_preset",
           "load_stable_diffusion", "packaged_config_dir", "read_prompt_embeddings", "save_prompt_embeddings"]
