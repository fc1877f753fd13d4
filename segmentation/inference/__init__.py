"""Inference: frames -> model input -> backend (eager/ONNX/bf16) -> probabilities -> masks."""
