"""What a training run tells its user: metrics files, TensorBoard, progress lines, loss curves.

- `MetricWriter` appends one JSON line per logged step to WORKDIR/metrics.jsonl (the record
  scripts read) and mirrors scalars and images to TensorBoard (WORKDIR/tensorboard), through
  tensorboardX so that TensorFlow is not needed. Only JAX process 0 should write: other processes
  build it with enabled=False.
- `Progress` prints a compact one-line status with the recent rate and an ETA.
- `read_metrics` / `plot_curves` turn metrics.jsonl back into records and a PNG of the curves.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, TextIO

import numpy as np

from depthvlm_jax import outputs

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _json_number(value):
  """A scalar as JSON can hold it: ints stay ints, NaN and inf become None (null)."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  value = float(value)  # also np / jax 0-d arrays
  return value if math.isfinite(value) else None


class MetricWriter:
  """Scalars to metrics.jsonl and TensorBoard, images to TensorBoard; a no-op when disabled."""

  def __init__(self, workdir: os.PathLike | str, enabled: bool = True, resume_step: Optional[int] = None):
    """`resume_step`: the run goes on from this step's checkpoint, so the lines a killed run wrote
    after it are dropped (their steps are trained again)."""
    self.enabled = enabled
    self.path = Path(workdir) / METRICS_FILE
    self._jsonl: Optional[TextIO] = None
    self._tb = None
    if not enabled:
      return
    Path(workdir).mkdir(parents=True, exist_ok=True)
    _drop_partial_line(self.path)
    if resume_step is not None:
      _drop_after(self.path, resume_step)
    self._jsonl = open(self.path, "a", encoding="utf-8")
    self._tb = _summary_writer_class()(logdir=str(Path(workdir) / TENSORBOARD_DIR))

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    """One line {"step": step, **scalars}, flushed so a killed run keeps every finished line."""
    if not self.enabled:
      return
    if "step" in scalars:
      raise ValueError("scalars may not be named 'step' (the line's own key)")
    step = int(step)
    row = {k: _json_number(v) for k, v in scalars.items()}
    # One write per line: a kill can only cut the last line, which read_metrics skips.
    self._jsonl.write(json.dumps({"step": step, **row}, allow_nan=False) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), step)  # TensorBoard keeps NaN and inf as they are

  def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """RGB uint8 [H, W, 3] pictures (e.g. `exports.depth_figure`) under their names."""
    if not self.enabled:
      return
    for name, img in images.items():
      img = np.asarray(img)
      if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image {name!r}: want uint8 [H, W, 3], got {img.dtype} {list(img.shape)}")
      self._tb.add_image(name, img, int(step), dataformats="HWC")

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes both outputs; later calls do nothing."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self.enabled = False

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _summary_writer_class():
  """tensorboardX.SummaryWriter, imported without torch: tensorboardX imports torch whenever
  it is installed (seconds, and CUDA libraries in a JAX process) though numpy input needs none."""
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    return SummaryWriter
  sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def _drop_partial_line(path: Path) -> None:
  """Cuts a line a killed run left unfinished, so lines appended on resume stay whole."""
  try:
    with open(path, "rb+") as f:
      data = f.read()
      if data and not data.endswith(b"\n"):
        f.truncate(data.rfind(b"\n") + 1)
  except FileNotFoundError:
    pass


def _drop_after(path: Path, step: int) -> None:
  if path.exists():
    kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if json.loads(line)["step"] <= step]
    with outputs.atomic_file(path, "w") as f:
      f.writelines(kept)


def read_metrics(path: os.PathLike | str) -> list[dict]:
  """The records of a metrics.jsonl; a cut last line (a killed writer) is skipped, any other
  line that does not parse raises ValueError naming it."""
  lines = Path(path).read_text(encoding="utf-8").split("\n")
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except ValueError:
      if i == len(lines) - 1:  # no newline after it: the writer was cut off mid-line
        break
      raise ValueError(f"{path}:{i + 1}: not a JSON line") from None
    if not isinstance(rec, dict):
      raise ValueError(f"{path}:{i + 1}: not a JSON object")
    records.append(rec)
  return records


def fmt_number(x) -> str:
  """Compact float for status lines: 3 significant digits, exponent only when tiny or huge."""
  if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
    return str(int(x))
  x = float(x)
  if not math.isfinite(x):
    return str(x)
  a = abs(x)
  if a == 0:
    return "0"
  if 100 <= a < 1e4:
    return f"{x:.0f}"
  if 1e-3 <= a < 100:
    a = abs(float(f"{x:.3g}"))  # 0.99996 has the digits of 1.00, not of 0.999
    return f"{x:.{max(0, 2 - math.floor(math.log10(a)))}f}"
  mant, exp = f"{x:.2e}".split("e")
  return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def fmt_duration(seconds: Optional[float]) -> str:
  """9m11s / 2h05m / 3d04h; '?' when unknown."""
  if seconds is None or not math.isfinite(seconds):
    return "?"
  s = max(0, int(round(seconds)))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  if s < 86400:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class Progress:
  """Status lines `step 120/2000 (6%) | 3.41 steps/s | 27.3 images/s | loss 0.412 | ETA 9m11s`.

  The rate is measured since the previous line, so compilation and data warm-up stop counting
  after the first line and the ETA follows the current speed. `clock` is injectable for tests.
  """

  def __init__(self, total_steps: int, every: int = 50, batch_size: Optional[int] = None,
               start_step: int = 0, clock: Callable[[], float] = time.monotonic,
               out: Optional[TextIO] = None, enabled: bool = True):
    self.total = int(total_steps)
    self.every = max(1, int(every))
    self.batch_size = batch_size
    self.clock = clock
    self.out = out
    self.enabled = enabled
    self._last_step = int(start_step)
    self._last_time = clock()

  def update(self, step: int, **fields) -> Optional[str]:
    """The status line if one is due (at least `every` steps since the last, or the final
    step), printed and returned; None otherwise."""
    step = int(step)
    if not self.enabled or not (step - self._last_step >= self.every or
                                (step == self.total and step != self._last_step)):
      return None
    now = self.clock()
    dt = now - self._last_time
    rate = (step - self._last_step) / dt if dt > 0 and step > self._last_step else None
    self._last_step, self._last_time = step, now
    pct = int(100 * step / self.total) if self.total > 0 else 100
    parts = [f"step {step}/{self.total} ({pct}%)"]
    if rate is not None:
      parts.append(f"{fmt_number(rate)} steps/s")
      if self.batch_size:
        parts.append(f"{fmt_number(rate * self.batch_size)} images/s")
    for k, v in fields.items():
      try:
        parts.append(f"{k} {fmt_number(v)}")
      except (TypeError, ValueError):
        parts.append(f"{k} {v}")
    left = max(0, self.total - step)
    parts.append(f"ETA {fmt_duration(0.0 if left == 0 else (left / rate if rate else None))}")
    line = " | ".join(parts)
    print(line, file=self.out or sys.stdout, flush=True)
    return line


def default_curve_keys(records: Iterable[dict]) -> list[str]:
  """Every key naming a loss, then the learning rate, in order of first appearance."""
  seen = []
  for rec in records:
    seen += [k for k in rec if k not in seen and k != "step"]
  return [k for k in seen if "loss" in k] + [k for k in seen if k == "lr"]


def plot_curves(metrics_jsonl_path: os.PathLike | str, out_png: os.PathLike | str,
                keys: Optional[list[str]] = None, dpi: int = 100) -> Path:
  """One subplot per key against step (log y for a loss that is positive throughout); the
  PNG replaces `out_png` atomically. Raises ValueError when no key has a value to plot."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  records = read_metrics(metrics_jsonl_path)
  keys = default_curve_keys(records) if keys is None else list(keys)
  series = {}
  for k in keys:
    pts = [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float)) and "step" in r]
    if pts:
      series[k] = np.asarray(pts, np.float64).T
  if not series:
    raise ValueError(f"{metrics_jsonl_path}: no values for {keys or 'any loss or lr key'} to plot")

  ncols = min(2, len(series))
  nrows = math.ceil(len(series) / ncols)
  fig = Figure(figsize=(5.0 * ncols, 2.6 * nrows), dpi=dpi)
  FigureCanvasAgg(fig)
  for i, (k, (steps, vals)) in enumerate(series.items()):
    ax = fig.add_subplot(nrows, ncols, i + 1)
    ax.plot(steps, vals, lw=1.0, marker="." if len(steps) < 30 else None)
    if "loss" in k and (vals > 0).all():
      ax.set_yscale("log")
    ax.set_title(k, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(which="both", labelsize=8)
    ax.grid(True, which="major", alpha=0.3)
  fig.tight_layout()
  out_png = Path(out_png)
  out_png.parent.mkdir(parents=True, exist_ok=True)
  with outputs.atomic_file(out_png) as f:
    fig.savefig(f, format="png")
  return out_png
