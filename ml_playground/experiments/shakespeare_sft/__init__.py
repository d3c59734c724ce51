"""Experiment shakespeare_sft."""
