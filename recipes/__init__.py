"""The packaged recipes (YAML only). A package so that a wheel installs them beside ``kdiqa`` and
``teachers``, where ``kdiqa.config.loader.RECIPES_DIR`` looks for recipes given by name."""
