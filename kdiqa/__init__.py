"""kdiqa: knowledge distillation for blind image quality assessment."""
__version__ = "0.1.0"


def load_student(path, map_location="cpu"):
    """Load a saved student folder for inference (``model.safetensors`` + ``config.json``).

    Imported lazily so that ``import kdiqa`` stays light and never pulls in timm.
    """
    from kdiqa.students.student import load_student as _load_student

    return _load_student(path, map_location=map_location)
