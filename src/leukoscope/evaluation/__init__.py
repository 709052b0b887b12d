"""Scoring trained models: metrics with bootstrap intervals, timing, reports, the study protocol."""
