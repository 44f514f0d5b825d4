"""Ingest of the two seed benchmark formats, ArrayRecord round trips, and refusal of bad input."""

import io
import json
import pathlib

import grain
import numpy as np
import pytest
from PIL import Image

from depthvlm_jax.data import shards
from depthvlm_jax.data.ingest import depthlm, depthvlm_bench
from depthvlm_jax.data.ingest.run import ingest
from depthvlm_jax.data.records import DepthRecord, RecordError

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"
BENCH = FIXTURES / "depthvlm_bench"
IBIMS = FIXTURES / "depthlm_ibims"


def needs_fixtures():
  if not FIXTURES.is_dir():
    pytest.skip(f"no fixtures at {FIXTURES}")


def bench_records():
  needs_fixtures()
  return list(depthvlm_bench.records(BENCH / "examples.jsonl", BENCH / "rgb", depth_root=BENCH / "depth",
                                     dataset="scannetpp"))


def ibims_records(depth_type):
  needs_fixtures()
  return list(depthlm.records(IBIMS / "ibims1_val.jsonl", dataset="ibims", depth_type=depth_type))


def rows(path):
  return [json.loads(line) for line in open(path)]


def assert_same(a: DepthRecord, b: DepthRecord):
  for name in DepthRecord.__dataclass_fields__:
    x, y = getattr(a, name), getattr(b, name)
    if isinstance(x, np.ndarray):
      assert isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y), name
    else:
      assert type(x) is type(y) and x == y, name


def test_depthvlm_bench_fixture():
  recs = bench_records()
  exact = 0
  for rec, row in zip(recs, rows(BENCH / "examples.jsonl"), strict=True):
    assert rec.key == f"scannetpp/{row['scene_id']}/{rec.frame_id}" and rec.frame_id.startswith("frame_")
    assert rec.image_size == (1920, 1440) and rec.depth_size == (256, 192)
    assert rec.intrinsics == (row["original_fx"], row["original_fx"], 959.5, 719.5)
    assert rec.domain == "indoor" and rec.depth_range == (0.001, 10.0)
    want = np.asarray(row["depth"], np.float64)
    np.testing.assert_allclose(rec.points[:, 2], want, rtol=1e-6)
    np.testing.assert_array_equal(rec.points[:, :2], np.asarray(row["pixel_coords"], np.float32))
    cols, rws = np.asarray(row["pixel_coords"]).T
    dense = rec.depth[rws, cols]
    np.testing.assert_allclose(dense, want, rtol=1e-6)
    exact += int(np.sum(dense == want.astype(np.float32)))
  # The JSONL depths are the PNG values / depth_scale: all 60 points match the map exactly.
  assert exact == 60


@pytest.mark.parametrize("depth_type", ["z", "ray"])
def test_depthlm_fixture(depth_type):
  recs = ibims_records(depth_type)
  for rec, row in zip(recs, rows(IBIMS / "ibims1_val.jsonl"), strict=True):
    fx, fy, cx, cy, w, h = row["intrinsics"]
    assert rec.image_size == rec.depth_size == (w, h) and rec.intrinsics == (fx, fy, cx, cy)
    assert rec.depth is None and rec.depth_source_type == depth_type
    u, v = np.asarray(row["pixel_coords"], np.float64).T
    want = np.asarray(row["depth"], np.float64)
    if depth_type == "ray":  # z is the ray's component along the optical axis
      direction = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=1)
      want = want / np.linalg.norm(direction, axis=1)
    np.testing.assert_allclose(rec.points[:, 2], want, rtol=1e-6)
    np.testing.assert_array_equal(rec.points[:, :2], np.stack([u, v], 1).astype(np.float32))


def test_shard_round_trip(tmp_path):
  recs = bench_records() + ibims_records("ray")
  paths = shards.write_shards(recs, tmp_path, "mix", num_shards=3)
  assert [pathlib.Path(p).name for p in paths] == [f"mix-{i:05d}-of-00003.array_record" for i in range(3)]
  source = shards.read_source(str(tmp_path / "mix-*.array_record"))
  assert isinstance(source, grain.sources.ArrayRecordDataSource) and len(source) == len(recs)
  by_key = {r.key: r for r in recs}
  read = list(grain.MapDataset.source(source).map(DepthRecord.from_bytes))
  assert sorted(r.key for r in read) == sorted(by_key)
  for r in read:
    assert_same(r, by_key[r.key])
  assert [r.key for r in shards.iter_records(paths)] == [r.key for r in read]


def test_ingest_run_and_replace(tmp_path):
  needs_fixtures()
  jsonl = IBIMS / "ibims1_val.jsonl"
  paths, count = ingest("depthlm", jsonl, tmp_path, dataset="ibims", depth_type="z", num_shards=4)
  assert count == 6 and len(paths) == 4
  paths, count = ingest("depthlm", jsonl, tmp_path, dataset="ibims", depth_type="z", records_per_shard=4)
  assert count == 6 and [pathlib.Path(p).name for p in paths] == [
      "ibims1_val-00000-of-00002.array_record", "ibims1_val-00001-of-00002.array_record"]
  # The earlier 4-shard run was replaced, not mixed in; nothing temporary is left.
  assert sorted(p.name for p in tmp_path.iterdir()) == [pathlib.Path(p).name for p in paths]
  assert len(shards.read_source(tmp_path)) == 6


# --- Bad input: small synthetic JSONL files whose second line is bad. -------------------------

W, H = 32, 24


def png(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def rgb_png(mode="RGB") -> bytes:
  a = np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)
  im = Image.fromarray(a)
  if mode == "I;16":
    im = Image.fromarray((a[..., 0].astype(np.uint16) * 257))
  elif mode != "RGB":
    im = im.convert(mode)
  buf = io.BytesIO()
  im.save(buf, format="PNG")
  return buf.getvalue()


def depthlm_row(image="a.png", **over):
  row = {"image": image, "intrinsics": [30.0, 30.0, 15.5, 11.5, W, H],
         "pixel_coords": [[3, 4], [20, 10]], "depth": [1.5, 2.5]}
  row.update(over)
  return {k: v for k, v in row.items() if v is not None}


def bench_row(image="a.png", **over):
  row = {"scene_id": "s0", "image": image, "depth_path": "d.png", "depth_scale": 1000.0,
         "original_rgb_size": [W, H], "original_depth_size": [W, H], "original_fx": 30.0,
         "pixel_coords": [[3, 4]], "depth": [1.5], "depth_type": "z_depth"}
  row.update(over)
  return {k: v for k, v in row.items() if v is not None}


def write_case(tmp_path, source, bad_row, files=None):
  """A JSONL whose line 1 is good and line 2 is `bad_row`, plus its images and depth maps."""
  files = {"a.png": rgb_png(), "b.png": rgb_png(), "d.png": png(np.full((H, W), 1500, np.uint16)), **(files or {})}
  for name, data in files.items():
    (tmp_path / name).write_bytes(data)
  good = depthlm_row() if source == "depthlm" else bench_row()
  jsonl = tmp_path / "in.jsonl"
  jsonl.write_text(json.dumps(good) + "\n" + json.dumps(bad_row) + "\n")
  return jsonl


def check_refused(tmp_path, source, bad_row, field, files=None):
  jsonl = write_case(tmp_path, source, bad_row, files)
  out = tmp_path / "out"
  params = {"dataset": "ibims", "depth_type": "z"} if source == "depthlm" else {"dataset": "scannetpp"}
  with pytest.raises(RecordError) as e:
    ingest(source, jsonl, out, **params)
  assert e.value.field == field
  assert f"{jsonl}:2" in str(e.value) and f"field {field!r}" in str(e.value)
  assert list(out.iterdir()) == []  # no shard, whole or partial, and no temporary left
  return str(e.value)


@pytest.mark.parametrize("data", [b"not an image at all", rgb_png()[:200]], ids=["corrupt", "truncated"])
def test_refuses_bad_image_bytes(tmp_path, data):
  check_refused(tmp_path, "depthlm", depthlm_row("b.png"), "image", {"b.png": data})


def test_refuses_truncated_jpeg(tmp_path):
  buf = io.BytesIO()
  Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(buf, format="JPEG")
  check_refused(tmp_path, "depthvlm_bench", bench_row("b.jpg"), "image", {"b.jpg": buf.getvalue()[:-100]})


def test_refuses_undeclared_depth_size_mismatch(tmp_path):
  files = {"d2.png": png(np.full((H // 2, W // 2), 1500, np.uint16))}
  check_refused(tmp_path, "depthvlm_bench", bench_row(depth_path="d2.png", original_depth_size=None),
          "original_depth_size", files)


def test_refuses_depthlm_image_size_mismatch(tmp_path):
  check_refused(tmp_path, "depthlm", depthlm_row(intrinsics=[30.0, 30.0, 15.5, 11.5, 64, 48]), "intrinsics")


@pytest.mark.parametrize("intrinsics", [None, [0.0, 30.0, 15.5, 11.5, W, H], [30.0, -1.0, 15.5, 11.5, W, H]])
def test_refuses_bad_depthlm_intrinsics(tmp_path, intrinsics):
  message = check_refused(tmp_path, "depthlm", depthlm_row(intrinsics=intrinsics), "intrinsics")
  assert ("missing" in message) == (intrinsics is None)


@pytest.mark.parametrize("fx", [None, 0.0, -3.0])
def test_refuses_bad_original_fx(tmp_path, fx):
  message = check_refused(tmp_path, "depthvlm_bench", bench_row(original_fx=fx), "original_fx")
  assert ("missing" in message) == (fx is None)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 0.0])
def test_refuses_bad_depth_values(tmp_path, value):
  check_refused(tmp_path, "depthlm", depthlm_row(depth=[1.5, value]), "depth")


def test_refuses_empty_valid_mask(tmp_path):
  files = {"d0.png": png(np.zeros((H, W), np.uint16))}
  check_refused(tmp_path, "depthvlm_bench", bench_row(depth_path="d0.png", pixel_coords=None, depth=None), "valid", files)


def test_refuses_empty_points(tmp_path):
  check_refused(tmp_path, "depthlm", depthlm_row(pixel_coords=[], depth=[]), "pixel_coords")


@pytest.mark.parametrize("coord", [[W, 0], [0, H], [-1, 3], [31.5, 23.5]])
def test_refuses_out_of_range_points(tmp_path, coord):
  check_refused(tmp_path, "depthlm", depthlm_row(pixel_coords=[[3, 4], coord]), "pixel_coords")


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_accepts_other_image_modes(tmp_path, mode):
  jsonl = write_case(tmp_path, "depthlm", depthlm_row("b.png"), {"b.png": rgb_png(mode)})
  recs = list(depthlm.records(jsonl, dataset="ibims", depth_type="z"))
  assert Image.open(io.BytesIO(recs[1].image)).mode == mode
  rgb = recs[1].decode_image()
  assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
