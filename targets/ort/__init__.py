"""The ONNX Runtime targets: ``ort-cpu``."""
