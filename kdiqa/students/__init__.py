"""Built-in students: :mod:`~kdiqa.students.timm_student` (``timm``) and :mod:`~kdiqa.students.official`
(``dpiqa_official``: the released DP-IQA student), on the contract of :mod:`~kdiqa.students.base`; the small
CNNs (``kdiqa_cnn_small``, ``kdiqa_cnn_tiny``) register in timm's model registry (:mod:`~kdiqa.students.small_cnn`).
``kdiqa.registry.STUDENTS`` imports the student modules when a name is first looked up."""
