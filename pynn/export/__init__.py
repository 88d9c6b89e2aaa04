"""Exporting models to other formats: ONNX (pynn/export/onnx.py)."""
from .onnx import export, export_onnx, to_onnx  # noqa: F401
