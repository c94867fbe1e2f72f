"""Built-in students. Importing this package registers them in ``kdiqa.registry.STUDENTS`` (``timm``, and
``dpiqa_official``: the released DP-IQA student) and the small CNNs (``kdiqa_cnn_small``,
``kdiqa_cnn_tiny``) in timm's model registry."""
from kdiqa.students import (
    official,  # noqa: F401  (registers dpiqa_official; its modules import small_cnn first)
    small_cnn,  # noqa: F401  (timm registration first: students resolve names through timm)
)
from kdiqa.students.student import Student, describe, load_student, save_student

__all__ = ["Student", "describe", "load_student", "save_student"]
