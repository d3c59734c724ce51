"""Experiment {{name}}."""
