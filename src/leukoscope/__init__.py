"""leukoscope: transfer-learned CNNs for white-blood-cell images (research use, not a diagnosis)."""

__version__ = "0.1.0"
