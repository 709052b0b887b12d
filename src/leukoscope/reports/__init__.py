"""Reports built from predictions: prediction files, a sample's white-cell differential,
Grad-CAM overlays and figures.

Nothing is imported here, so that writing a prediction file does not load SciPy for the
differential's intervals.
"""
