"""The built-in recipes (YAML only), package data of kdiqa: ``kdiqa.config.loader.find_recipe`` finds
them by name (``quickstart``, ``dpiqa/koniq10k``)."""
