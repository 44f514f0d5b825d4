"""The demo experiment's config (configs/demo.py), for benchmarks run from any folder."""

from __future__ import annotations

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config():
  spec = importlib.util.spec_from_file_location("demo", os.path.join(REPO, "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
