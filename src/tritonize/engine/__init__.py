"""ONNX -> engine: TensorRT plans on a GPU, and the checks that keep them loadable."""
