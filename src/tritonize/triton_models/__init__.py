"""Sources of the Python-backend models, copied into each built model directory.

Each module keeps its logic in plain classes, testable without Triton; its `TritonPythonModel`
only converts tensors and errors. Modules import nothing from `tritonize` outside this package,
so a built repository runs on any tritonserver with the listed pip packages.
"""
