"""Prediction, calibration, abstention, explanations and ONNX export for trained models."""

from leukoscope.inference.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
