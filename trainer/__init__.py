"""The trainer: datasets from labelled windows, torch models, ONNX export, gate and publish."""
