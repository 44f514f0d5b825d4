import collections
import functools
import os
import sys
import tempfile

# The mesh tests need several (virtual) CPU devices; this must be set before JAX starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain's worker processes read absl flags, which pytest never parses.
flags.FLAGS.mark_as_parsed()

# Test-speed settings (2 CPU cores): a cheaper PRNG for parameter init, and a compilation
# cache so that the same tiny-model programs compiled by several test files compile once.
jax.config.update("jax_default_prng_impl", "rbg")
jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "depthvlm_jax_test_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@pytest.fixture
def unrolled_scans(monkeypatch):
  """Flax scans unrolled while the test traces: XLA's cost analysis counts a loop body once, not
  once per layer."""
  monkeypatch.setattr(nn, "scan", functools.partial(nn.scan, unroll=True))


def pytest_collection_modifyitems(items):
  """Files with the most slow tests first. setup.cfg runs the files on two xdist workers, in this
  order (--no-loadscope-reorder), so the longest files start at once beside each other instead of
  one of them starting last."""
  slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
  items.sort(key=lambda item: -slow[item.path])  # stable: the order within a file is kept
