"""Built-in teachers. Importing this package registers them in ``kdiqa.registry.TEACHERS``."""
import teachers.dpiqa  # noqa: F401  (registers 'dpiqa')
import teachers.external  # noqa: F401  (registers 'pyiqa' and 'onnx')
import teachers.tanet  # noqa: F401  (registers 'tanet')
