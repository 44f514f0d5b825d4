"""Ingest of the two seed benchmark formats, ArrayRecord round trips, and refusal of bad input."""

import io
import json
import pathlib
import re
import shutil

import grain
import numpy as np
import pytest
from PIL import Image

from flax import serialization

from depthvlm_jax.data import records, shards
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
  source = shards.ShardSource(str(tmp_path / "mix-*.array_record"))
  assert len(source) == len(recs)
  by_key = {r.key: r for r in recs}
  read = list(grain.MapDataset.source(source).map(shards.RawRecord.decode))
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
  assert len(shards.ShardSource(tmp_path)) == 6


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


@pytest.mark.parametrize("intrinsics", [None, [0.0, 0.0, 15.5, 11.5, W, H], [30.0, -1.0, 15.5, 11.5, W, H]])
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


# --- Mislabelled input that parses: each case is a real fixture line made wrong. ---------------


def fixture_refused(tmp_path, field, edit) -> str:
  """Ingests the DepthVLM-Bench fixture with line 2 changed by `edit(row, depth_dir)` (depth_dir:
  a copy of the fixture's depth PNGs, which edit may rewrite); asserts a RecordError naming the
  file:line, the record's key and `field`, and that no shard was written. Returns the message."""
  needs_fixtures()
  depth_dir = tmp_path / "depth"
  shutil.copytree(BENCH / "depth", depth_dir)
  lines = rows(BENCH / "examples.jsonl")
  edit(lines[1], depth_dir)
  jsonl = tmp_path / "in.jsonl"
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in lines))
  out = tmp_path / "out"
  with pytest.raises(RecordError) as e:
    ingest("depthvlm_bench", jsonl, out, root=BENCH / "rgb", depth_root=depth_dir, dataset="scannetpp")
  message = str(e.value)
  assert e.value.field == field, message
  assert f"record '{jsonl}:2 [scannetpp/2a1a3afad9/frame_002760]', field {field!r}" in message
  assert not out.exists() or list(out.iterdir()) == []
  return message


def png_array(path) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im)


def test_fixture_dense_map_matches_its_points():
  """The cross-check's baseline: on the real records the map equals every point (ratio 1), while
  each of the 30 wrong pairings (another frame's map) disagrees at >= 40% of the points."""
  needs_fixtures()
  maps = {r["depth_path"]: png_array(BENCH / "depth" / r["depth_path"]) / 1000.0 for r in rows(BENCH / "examples.jsonl")}
  for row in rows(BENCH / "examples.jsonl"):
    points = np.concatenate([row["pixel_coords"], np.asarray(row["depth"])[:, None]], 1).astype(np.float32)
    for name, dense in maps.items():
      problem = records.dense_vs_points(dense.astype(np.float32), points)
      assert (problem is None) == (name == row["depth_path"]), (row["depth_path"], name, problem)


def test_refuses_8bit_depth_png(tmp_path):
  """a. A depth PNG re-saved as 8-bit (a visualisation): max 0.255 m against points of 0.8-2.8 m."""

  def edit(row, depth_dir):
    raw = png_array(depth_dir / row["depth_path"])
    Image.fromarray((raw / raw.max() * 255).astype(np.uint8)).save(depth_dir / row["depth_path"])

  message = fixture_refused(tmp_path, "depth_path", edit)
  assert "is an 8-bit PNG (max 255, i.e. 0.255 m)" in message


@pytest.mark.parametrize("scale", [100.0, 10000.0])
def test_refuses_wrong_depth_scale(tmp_path, scale):
  """b. depth_scale 10x off: the map is a consistent 10x (or 0.1x) the record's own points."""
  message = fixture_refused(tmp_path, "depth", lambda row, _: row.update(depth_scale=scale))
  assert "at 10 of 10 points" in message and f"median dense/point ratio {1000 / scale:g}" in message
  assert "a wrong depth scale" in message


@pytest.mark.parametrize("other", [0, 2, 3, 4, 5])
def test_refuses_another_frames_depth_png(tmp_path, other):
  """c. The depth PNG of another frame (same size, same depth_scale)."""
  other_path = rows(BENCH / "examples.jsonl")[other]["depth_path"] if FIXTURES.is_dir() else ""
  message = fixture_refused(tmp_path, "depth", lambda row, _: row.update(depth_path=other_path))
  assert re.search(r"disagrees with the record's sparse points at \d+ of 10 points", message), message
  assert "median dense/point ratio" in message and "the depth map of another frame" in message


@pytest.mark.parametrize("declared", ["swapped", "absent"])
def test_refuses_transposed_depth_map(tmp_path, declared):
  """d. A transposed map (and points, so they still agree with it): with original_depth_size
  swapped to match, only the aspect check sees it; absent, the undeclared size mismatch does."""

  def edit(row, depth_dir):
    raw = png_array(depth_dir / row["depth_path"])
    Image.fromarray(np.ascontiguousarray(raw.T)).save(depth_dir / row["depth_path"])
    row["pixel_coords"] = [[r, c] for c, r in row["pixel_coords"]]
    row["original_depth_size"] = row["original_depth_size"][::-1] if declared == "swapped" else None

  if declared == "swapped":
    message = fixture_refused(tmp_path, "depth_size", edit)
    assert "the depth map is 192x256 (W x H, aspect 0.750) but the image is 1920x1440 (aspect 1.333)" in message
  else:
    fixture_refused(tmp_path, "original_depth_size", edit)


@pytest.mark.parametrize("field,value", [("original_fx", True), ("original_fx", "1434.29"),
                                         ("original_rgb_size", [1920, True]), ("original_rgb_size", [1920.5, 1440]),
                                         ("depth_scale", True), ("depth", [True] * 10)])
def test_refuses_non_numbers(tmp_path, field, value):
  """e. A JSON bool (or a string) where a number belongs, and a fraction where a size belongs:
  numpy would read `true` as 1.0 (an fx of 1 px) and truncate 1920.5."""
  message = fixture_refused(tmp_path, field, lambda row, _: row.update({field: value}))
  assert ("whole numbers" if value == [1920.5, 1440] else "not numeric") in message


@pytest.mark.parametrize("over", [{"original_cx": 1e5}, {"original_cy": -50.0}, {"original_cx": 1920.0}])
def test_refuses_principal_point_outside_the_image(tmp_path, over):
  """f. cx, cy outside the image, [-0.5, W - 0.5] x [-0.5, H - 0.5] (pixel centres at integers)."""
  message = fixture_refused(tmp_path, "intrinsics", lambda row, _: row.update(over))
  assert "lies outside the 1920x1440 image" in message


def test_refuses_absurd_point_depth(tmp_path):
  """g. One point at 1e9 m: beyond 10x the dataset's max (10 m for ScanNet++). The other nine
  still match the map, so the cross-check alone (1 of 10 off) would let it through."""
  message = fixture_refused(tmp_path, "points", lambda row, _: row["depth"].__setitem__(3, 1e9))
  assert "1 of 10 depths are beyond 10x the dataset's max depth 10 m" in message and "1e+09 m" in message


@pytest.mark.parametrize("depth,refused", [(1e9, True), (11 * 25.0, True), (9 * 25.0, False)])
def test_refuses_point_depths_beyond_the_range(tmp_path, depth, refused):
  """g. Without fixtures: DepthLM points past 10x the max (iBims: 25 m) are refused; 9x the max
  is a real but unevaluated depth, kept (the pipeline's range mask leaves it out)."""
  if refused:
    message = check_refused(tmp_path, "depthlm", depthlm_row(depth=[1.5, depth]), "points")
    assert f"beyond 10x the dataset's max depth 25 m, e.g. point 1 at (col 20, row 10): {depth:g} m" in message
  else:
    jsonl = write_case(tmp_path, "depthlm", depthlm_row(depth=[1.5, depth]))
    assert list(depthlm.records(jsonl, dataset="ibims", depth_type="z"))[1].points[1, 2] == depth


def test_refuses_dense_depth_beyond_the_range(tmp_path):
  """g. A dense map read with depth_scale 1 (the PNG's millimetres taken as metres: 1500 m)."""
  message = check_refused(tmp_path, "depthvlm_bench", bench_row(depth_scale=1.0, pixel_coords=None, depth=None), "depth")
  assert "max 1500 m is beyond 10x the dataset's max depth 10 m" in message


def test_refuses_latin1_jsonl(tmp_path):
  """A Latin-1 byte in a JSONL line: refused naming the file and line, not a bare UnicodeDecodeError."""
  jsonl = write_case(tmp_path, "depthlm", depthlm_row(note="caf\u00e9"))
  jsonl.write_bytes(jsonl.read_bytes().replace("caf\\u00e9".encode(), "café".encode("latin-1")))
  with pytest.raises(RecordError) as e:
    list(depthlm.records(jsonl, dataset="ibims", depth_type="z"))
  assert e.value.field == "json" and e.value.record == f"{jsonl}:2"
  assert "not UTF-8 text: byte 0xe9 at column" in str(e.value)


def record_fields(**over) -> dict:
  rec = DepthRecord(key="k", image=rgb_png(), image_size=(W, H), intrinsics=(30.0, 30.0, 15.5, 11.5),
                    depth_size=(W, H), dataset="ibims", domain="indoor", depth_range=(0.005, 25.0),
                    points=np.array([[3, 4, 1.5]], np.float32))
  return {**rec.__dict__, **over}


@pytest.mark.parametrize("data", [b"garbage \xff\x00", b"\x01", b"", None], ids=["garbage", "int", "empty", "truncated"])
def test_from_bytes_refuses_msgpack_garbage(data):
  if data is None:
    data = DepthRecord(**record_fields()).to_bytes()[:-30]
  with pytest.raises(RecordError) as e:
    DepthRecord.from_bytes(data)
  assert (e.value.record, e.value.field) == ("?", "record")
  assert "msgpack" in e.value.problem


def test_from_bytes_refuses_another_schema():
  """A record of another schema, or a DepthRecord's bytes with a field of the wrong type."""
  full = serialization.msgpack_restore(DepthRecord(**record_fields()).to_bytes())
  cases = [({"key": "other", "image": full["image"], "size": [W, H]}, "other", "image_size", "missing"),
           ({**full, "extra": 1}, "k", "record", "unknown fields ['extra']"),
           ({**full, "intrinsics": True}, "k", "intrinsics", "expected 4 numbers, got bool True"),
           ({**full, "image_size": np.array([W, H], np.float64)}, "k", "image_size", "expected 2 integers"),
           ({**full, "domain": 3}, "k", "domain", "must be a string")]
  for d, key, field, problem in cases:
    with pytest.raises(RecordError) as e:
      DepthRecord.from_bytes(serialization.msgpack_serialize(d))
    assert (e.value.record, e.value.field) == (key, field) and problem in e.value.problem, str(e.value)


@pytest.mark.parametrize("field,value", [("intrinsics", (True, 30.0, 15.5, 11.5)), ("image_size", (W * 1.0, H)),
                                         ("depth_size", (W, True)), ("depth_range", (0.005, "25")),
                                         ("points", [[3, 4, 1.5]]), ("image", "a.png")])
def test_validate_refuses_wrong_types(field, value):
  with pytest.raises(RecordError) as e:
    DepthRecord(**record_fields(**{field: value})).validate()
  assert (e.value.record, e.value.field) == ("k", field) and "must be" in e.value.problem, str(e.value)
