"""Builders of ONNX graphs for the networks of the papers (structure is what matters)."""
