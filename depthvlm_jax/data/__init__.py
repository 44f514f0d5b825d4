"""Unified metric-depth data: records, ingestion, synthetic scenes, transforms, text, pipelines."""
