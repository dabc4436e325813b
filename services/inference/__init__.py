"""The ONNX Runtime inference consumer."""
