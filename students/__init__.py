"""Built-in students. Importing this package registers them in ``kdiqa.registry.STUDENTS`` and the
small CNNs (``kdiqa_cnn_small``, ``kdiqa_cnn_tiny``) in timm's model registry."""
from students import small_cnn  # noqa: F401  (timm registration first: students resolve names through timm)
from students.student import Student, describe, load_student, save_student

__all__ = ["Student", "describe", "load_student", "save_student"]
