"""Built-in students. Importing this package registers them in ``kdiqa.registry.STUDENTS``."""
