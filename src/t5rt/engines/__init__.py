"""Inference backends behind one Engine protocol (ONNX Runtime, TensorRT)."""

from .base import Engine

__all__ = ["Engine"]
