"""Built-in teachers. Importing this package registers them in ``kdiqa.registry.TEACHERS``."""
