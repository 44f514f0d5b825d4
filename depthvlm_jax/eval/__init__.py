"""Evaluation: depth metrics and benchmark runners."""
