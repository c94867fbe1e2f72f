"""Built-in teachers. Importing this package registers them in ``kdiqa.registry.TEACHERS``."""
import kdiqa.teachers.dpiqa  # noqa: F401  (registers 'dpiqa')
import kdiqa.teachers.external  # noqa: F401  (registers 'pyiqa' and 'onnx')
import kdiqa.teachers.tanet  # noqa: F401  (registers 'tanet')
