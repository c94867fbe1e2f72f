"""Built-in teachers on the contract of :mod:`~kdiqa.teachers.base`: ``dpiqa``, ``tanet``, ``pyiqa`` and ``onnx``.
``kdiqa.registry.TEACHERS`` imports their packages when a name is first looked up."""
