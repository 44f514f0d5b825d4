"""The DepthVLM-Bench record fields beyond the seed fixtures (iBims masks, ETH3D's raw float32
depth) and DepthLM's fx <= 0 fallback, on small files written here."""

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from depthvlm_jax.data.ingest import depthlm, depthvlm_bench
from depthvlm_jax.data.ingest.run import ingest
from test_ingest import H, W, bench_row, check_refused, depthlm_row, png, rgb_png

RNG = np.random.default_rng(0)


def mask_png(mask, mode) -> bytes:
  """A bool [H, W] mask as a 1-bit ("1") or 8-bit ("L", 0/255) PNG."""
  buf = io.BytesIO()
  Image.fromarray(mask.astype(np.uint8) * 255).convert(mode).save(buf, format="PNG")
  return buf.getvalue()


def bench_case(tmp_path, row, depth_files):
  """One-line JSONL with image a.png; depth_files (depth maps, masks) go under depth/."""
  (tmp_path / "a.png").write_bytes(rgb_png())
  (tmp_path / "depth").mkdir()
  for name, data in depth_files.items():
    (tmp_path / "depth" / name).write_bytes(data)
  jsonl = tmp_path / "in.jsonl"
  jsonl.write_text(json.dumps(row) + "\n")
  return jsonl


def test_ibims_masks(tmp_path):
  valid_mask = RNG.random((H, W)) > 0.3
  transp = np.zeros((H, W), bool)
  transp[2:6, 8:14] = True
  # The only point lies on a transparent pixel, where the map (1.5 m) disagrees with it: the
  # dense-vs-points check must skip it, as the evaluation would.
  valid_mask[4, 10] = True
  files = {"d.png": png(np.full((H, W), 1500, np.uint16)), "valid.png": mask_png(valid_mask, "L"),
           "transp.png": mask_png(transp, "1")}
  row = bench_row(dataset="ibims", mask_valid_path="valid.png", mask_transp_path="transp.png",
                  pixel_coords=[[10, 4]], depth=[3.0])
  (rec,) = depthvlm_bench.records(bench_case(tmp_path, row, files), depth_root=tmp_path / "depth")
  expected = valid_mask & ~transp
  assert rec.valid.dtype == np.bool_ and np.array_equal(rec.valid, expected)
  assert np.all(rec.depth == np.float32(1.5))  # masked pixels keep their depth
  assert np.array_equal(rec.valid_mask(), expected)


@pytest.mark.parametrize("field", ["mask_valid_path", "mask_transp_path"])
@pytest.mark.parametrize("case", ["size", "undecodable", "missing", "rgb"])
def test_refuses_bad_masks(tmp_path, field, case):
  data = {"size": mask_png(np.ones((H // 2, W // 2), bool), "L"), "undecodable": b"not a PNG",
          "rgb": mask_png(np.ones((H, W), bool), "RGB")}.get(case)
  files = {} if data is None else {"m.png": data}
  message = check_refused(tmp_path, "depthvlm_bench", bench_row("b.png", **{field: "m.png"}), field, files)
  assert "[scannetpp/s0/b]" in message


def float32_depth(tmp_path, raw, **over):
  """A bench record of raw float32 depth d.bin (no PNG), its point at (3, 4)."""
  raw.astype("<f4").tofile(tmp_path / "d.bin")
  return bench_row(**{"dataset": "eth3d", "depth_format": "binary_float32", "depth_path": "d.bin",
                      "depth": [float(raw[4, 3])], **over})


@pytest.mark.parametrize("depth_scale", [None, 1.0, 1000.0])
def test_eth3d_binary_float32(tmp_path, depth_scale):
  raw = RNG.uniform(0.5, 40.0, (H, W)).astype(np.float32)
  bad = {(0, 0): np.nan, (0, 1): np.inf, (0, 2): -np.inf, (1, 0): -2.0, (1, 1): 0.0, (1, 2): -0.0}
  for (r, c), v in bad.items():
    raw[r, c] = v
  row = float32_depth(tmp_path, raw, depth_scale=depth_scale)
  (tmp_path / "a.png").write_bytes(rgb_png())
  (tmp_path / "in.jsonl").write_text(json.dumps(row) + "\n")
  (rec,) = depthvlm_bench.records(tmp_path / "in.jsonl")
  measured = np.ones((H, W), bool)
  measured[tuple(zip(*bad))] = False
  # Bit for bit: the values are the file's, depth_scale (whatever it says) not applied.
  assert np.array_equal(rec.depth.view(np.uint32)[measured], raw.view(np.uint32)[measured])
  assert np.all(rec.depth[~measured] == 0) and not np.any(rec.valid_mask()[~measured])
  assert rec.valid is None and rec.depth_range == (0.01, 50.0)


@pytest.mark.parametrize("over, field", [
    ({"original_depth_size": [W - 1, H]}, "depth_path"),  # byte count != W*H*4
    ({"original_depth_size": None}, "original_depth_size"),
    ({"depth_format": "exr"}, "depth_format"),
])
def test_refuses_bad_binary_float32(tmp_path, over, field):
  message = check_refused(tmp_path, "depthvlm_bench", float32_depth(tmp_path, np.full((H, W), 1.5), **over), field)
  if field == "depth_format":
    assert "'png16'" in message and "'binary_float32'" in message


def test_depthlm_fx_falls_back_to_fy(tmp_path, caplog):
  (tmp_path / "a.png").write_bytes(rgb_png())
  rows = [depthlm_row(), depthlm_row(intrinsics=[0.0, 32.0, 15.5, 11.5, W, H]),
          depthlm_row(intrinsics=[-5.0, 28.0, 15.5, 11.5])]
  jsonl = tmp_path / "in.jsonl"
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
  recs = list(depthlm.records(jsonl, dataset="ibims", depth_type="z"))
  assert [r.intrinsics[:2] for r in recs] == [(30.0, 30.0), (32.0, 32.0), (28.0, 28.0)]
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    _, count = ingest("depthlm", jsonl, tmp_path / "out", dataset="ibims", depth_type="z")
  assert count == 3
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert [w for w in warnings if "depthlm: " in w] == [
      "depthlm: 2 record(s) had fx <= 0; used fy (as DepthLM's release does)"]
  assert any(w.startswith(f"{jsonl}:2 [ibims/a]: fx <= 0") for w in warnings)
  assert any(w.startswith(f"{jsonl}:3 [ibims/a]: fx <= 0") for w in warnings)
  assert not any(f"{jsonl}:1 " in w for w in warnings)
