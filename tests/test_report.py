"""Training reports: metrics.jsonl, TensorBoard events, progress lines, curves, depth figures."""

import io
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from depthvlm_jax.infer import exports
from depthvlm_jax.train import report


def strict_json(line: str):
  """json.loads that refuses NaN / Infinity, which are not JSON."""
  def refuse(name):
    raise ValueError(f"not JSON: {name}")
  return json.loads(line, parse_constant=refuse)


def read_events(logdir: Path) -> list:
  """Every Event in the TFRecord-framed event files under `logdir`, checking both CRCs."""
  from tensorboardX.proto import event_pb2
  from tensorboardX.record_writer import masked_crc32c
  events = []
  files = sorted(logdir.glob("events.out.tfevents.*"))
  assert files, f"no event file in {logdir}"
  for path in files:
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      header = data[pos:pos + 8]
      (n,) = struct.unpack("<Q", header)
      assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
      body = data[pos + 12:pos + 12 + n]
      assert struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])[0] == masked_crc32c(body)
      event = event_pb2.Event()
      event.ParseFromString(body)
      events.append(event)
      pos += 16 + n
  return events


ROWS = [(0, {"loss": 2.5, "lr": 0.0, "depth_loss": np.float32(1.25)}),
        (10, {"loss": float("nan"), "lr": 1e-4, "depth_loss": 0.75}),
        (20, {"loss": 0.5, "lr": 2e-4, "depth_loss": float("inf"), "examples": np.int64(640)})]


def write_rows(workdir, rows=ROWS):
  with report.MetricWriter(workdir) as w:
    for step, scalars in rows:
      w.write_scalars(step, scalars)


def test_jsonl_holds_exactly_the_lines_written_nan_as_null(tmp_path):
  write_rows(tmp_path)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [strict_json(l) for l in lines] == [
      {"step": 0, "loss": 2.5, "lr": 0.0, "depth_loss": 1.25},
      {"step": 10, "loss": None, "lr": 1e-4, "depth_loss": 0.75},
      {"step": 20, "loss": 0.5, "lr": 2e-4, "depth_loss": None, "examples": 640}]
  assert isinstance(strict_json(lines[2])["examples"], int)
  with pytest.raises(ValueError, match="step"):
    with report.MetricWriter(tmp_path) as w:
      w.write_scalars(30, {"step": 1.0})


def test_resume_appends_after_cutting_a_killed_runs_partial_line(tmp_path):
  write_rows(tmp_path, ROWS[:2])
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 15, "loss": 0.6')  # killed mid-line
  write_rows(tmp_path, ROWS[2:])
  assert [r["step"] for r in report.read_metrics(tmp_path / "metrics.jsonl")] == [0, 10, 20]


def test_tensorboard_events_hold_the_scalars_and_images(tmp_path):
  img = np.zeros((6, 10, 3), np.uint8)
  img[:, :5] = (255, 0, 0)
  with report.MetricWriter(tmp_path) as w:
    for step, scalars in ROWS:
      w.write_scalars(step, scalars)
    w.write_images(20, {"val/figure": img})
    with pytest.raises(ValueError, match="uint8"):
      w.write_images(20, {"bad": img.astype(np.float32)})
  scalars, images = {}, {}
  for event in read_events(tmp_path / "tensorboard"):
    for v in event.summary.value:
      if v.HasField("image"):
        images[(v.tag, event.step)] = v.image
      else:
        scalars[(v.tag, event.step)] = v.simple_value
  want = {(k, step): float(v) for step, row in ROWS for k, v in row.items()}
  assert set(scalars) == set(want)
  for key, v in want.items():
    assert (math.isnan(v) and math.isnan(scalars[key])) or scalars[key] == pytest.approx(v, rel=1e-6), key
  decoded = np.asarray(Image.open(io.BytesIO(images[("val/figure", 20)].encoded_image_string)).convert("RGB"))
  np.testing.assert_array_equal(decoded, img)


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / "w"
  with report.MetricWriter(workdir, enabled=False) as w:
    w.write_scalars(1, {"loss": 1.0})
    w.write_images(1, {"x": np.zeros((2, 2, 3), np.uint8)})
    w.flush()
  assert not workdir.exists()


def test_progress_lines_rate_and_eta_from_the_clock(capsys):
  now = [100.0]
  p = report.Progress(total_steps=100, every=10, batch_size=8, clock=lambda: now[0])
  now[0] += 2.0
  assert p.update(5, loss=1.0) is None  # fewer than `every` steps
  now[0] += 2.0
  line = p.update(10, loss=0.41234, lr=3e-4)
  assert line == "step 10/100 (10%) | 2.50 steps/s | 20.0 images/s | loss 0.412 | lr 3e-4 | ETA 36s"
  assert capsys.readouterr().out == line + "\n"
  now[0] += 10.0  # window since the last line: 20 steps in 10 s
  assert p.update(30) == "step 30/100 (30%) | 2.00 steps/s | 16.0 images/s | ETA 35s"
  now[0] += 0.5
  assert p.update(35) is None
  now[0] += 3500.0
  assert p.update(100).endswith("ETA 0s")  # the last step prints although < every steps
  assert report.fmt_duration(551) == "9m11s" and report.fmt_duration(7500) == "2h05m"
  assert [report.fmt_number(x) for x in (1234.5, 0.99996, 27.34, 0.0)] == ["1234", "1.00", "27.3", "0"]


def test_read_metrics_skips_a_cut_last_line_but_not_a_bad_middle_one(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "loss": null}\n{"step": 2, "lo')
  assert report.read_metrics(path) == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": None}]
  path.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo\n{"step": 2}\n')
  with pytest.raises(ValueError, match=":2:"):
    report.read_metrics(path)


def test_plot_curves_writes_a_png_with_a_panel_per_key(tmp_path):
  with report.MetricWriter(tmp_path) as w:
    for step in range(0, 200, 5):
      w.write_scalars(step, {"loss": 3.0 / (1 + step), "depth_loss": 1.0 / (1 + step), "lr": 1e-3 * min(1, step / 50),
                             "grad_norm": 2.0})
  jsonl = tmp_path / "metrics.jsonl"
  assert report.default_curve_keys(report.read_metrics(jsonl)) == ["loss", "depth_loss", "lr"]
  out = report.plot_curves(jsonl, tmp_path / "plots" / "curves.png")
  assert out == tmp_path / "plots" / "curves.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  big = np.asarray(Image.open(out).convert("RGB"))
  small = np.asarray(Image.open(report.plot_curves(jsonl, tmp_path / "one.png", keys=["loss"])).convert("RGB"))
  assert 200 <= small.shape[0] < big.shape[0] <= 2000 and 300 <= small.shape[1] < big.shape[1] <= 2000
  assert len(np.unique(big.reshape(-1, 3), axis=0)) > 10  # drawn, not blank
  assert not list(tmp_path.glob("**/.*partial*"))
  with pytest.raises(ValueError, match="no values"):
    report.plot_curves(jsonl, tmp_path / "none.png", keys=["missing"])


H, W = 96, 128


def scene():
  rows, cols = np.mgrid[0:H, 0:W]
  gt = (1.0 + 4.0 * rows / H + cols / W).astype(np.float32)
  valid = np.ones_like(gt, bool)
  valid[:, :W // 4] = False  # the left quarter has no ground truth
  image = np.stack([rows * 2, cols, np.full_like(rows, 40)], -1).astype(np.uint8)  # never pure white
  return image, gt, valid


def panels(fig: np.ndarray) -> list[np.ndarray]:
  """The middle row of each image panel: runs of non-white pixels wider than a colour bar."""
  row = fig[fig.shape[0] // 2 + 10]
  ink = (row != 255).any(-1)
  edges = np.flatnonzero(np.diff(np.concatenate([[0], ink.astype(np.int8), [0]])))
  return [row[a:b] for a, b in zip(edges[::2], edges[1::2]) if b - a >= 0.9 * W]


def test_depth_figure_panels_colours_and_masking():
  image, gt, valid = scene()
  only = exports.depth_figure(image, gt)
  same = exports.depth_figure(image, gt, gt, valid, title="exact")
  off = exports.depth_figure(image, gt * 1.3, gt, valid, title="exact")
  for fig in (only, same, off):
    assert fig.dtype == np.uint8 and fig.ndim == 3 and fig.shape[-1] == 3
    assert len(np.unique(fig.reshape(-1, 3), axis=0)) > 50
  assert len(panels(only)) == 2 and len(panels(same)) == 4 and len(panels(off)) == 4
  assert same.shape[1] > 1.8 * only.shape[1]
  assert same.shape == off.shape and np.abs(same.astype(int) - off.astype(int)).sum(-1).astype(bool).mean() > 0.1
  _, pred, truth, err = panels(off)
  q = len(truth) // 4  # the quarter without ground truth, in figure pixels
  black = lambda p: (p == 0).all(-1)
  assert black(truth[:q - 2]).all() and black(err[:q - 2]).all()
  assert not black(truth[q + 2:]).any() and not black(err[q + 2:]).any() and not black(pred).any()
  # One colour range for both depths: an exact prediction looks like the ground truth, a wrong one not.
  _, pred_same, truth_same, _ = panels(same)
  diff = lambda a, b: np.abs(a[q + 2:-2].astype(int) - b[q + 2:-2].astype(int)).max()
  assert diff(pred_same, truth_same) <= 2 and diff(pred, truth) > 40
  assert diff(truth, truth_same) <= 2  # the scale comes from the ground truth, not the prediction


def test_save_depth_figure_writes_the_rendered_png(tmp_path):
  image, gt, valid = scene()
  exports.save_depth_figure(tmp_path / "f.png", image, gt * 0.9, gt, valid)
  saved = np.asarray(Image.open(tmp_path / "f.png").convert("RGB"))
  np.testing.assert_array_equal(saved, exports.depth_figure(image, gt * 0.9, gt, valid))
  assert [p.name for p in tmp_path.iterdir()] == ["f.png"]
