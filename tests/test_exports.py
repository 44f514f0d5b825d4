"""Exports of predictions read back: point clouds / PLY, 16-bit depth PNGs, colour pictures; and
the focal length from a photo's EXIF."""

import numpy as np
import pytest
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from depthvlm_jax.infer import camera, exports


def test_point_cloud_back_projects_and_ply_round_trips(tmp_path):
  depth = np.array([[2.0, 0.0], [4.0, 1.0]], np.float32)
  pts, cols = exports.point_cloud(depth, (2.0, 2.0, 0.5, 0.5), np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
  np.testing.assert_allclose(pts, [[-0.5, -0.5, 2.0], [-1.0, 1.0, 4.0], [0.25, 0.25, 1.0]])
  exports.save_ply(str(tmp_path / "a.ply"), pts, cols)
  raw = (tmp_path / "a.ply").read_bytes()
  header, body = raw.split(b"end_header\n")
  assert b"element vertex 3" in header
  rec = np.frombuffer(body, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
  np.testing.assert_array_equal(rec["z"], pts[:, 2])
  np.testing.assert_array_equal(rec["r"], cols[:, 0])


def test_ply_of_a_depth_map_reprojects_onto_its_pixels(tmp_path):
  """fx != fy and an off-centre principal point, so a swapped or misplaced intrinsic shows."""
  rng = np.random.default_rng(0)
  h, w = 24, 32
  fx, fy, cx, cy = 40.0, 25.0, 13.5, 9.0
  depth = rng.uniform(0.3, 60.0, (h, w)).astype(np.float32)
  depth[rng.uniform(size=(h, w)) < 0.2] = 0.0
  depth[0, :3] = (np.nan, np.inf, -1.0)
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  exports.save_ply(tmp_path / "d.ply", *exports.point_cloud(depth, (fx, fy, cx, cy), image))
  pts, colors = exports.load_ply(tmp_path / "d.ply")
  valid = np.isfinite(depth) & (depth > 0)
  rows, cols = np.nonzero(valid)  # row-major, the order of the points
  assert pts.dtype == np.float32 and pts.shape == (valid.sum(), 3)
  np.testing.assert_array_equal(pts[:, 2], depth[valid])
  np.testing.assert_allclose(pts[:, 0] / pts[:, 2] * fx + cx, cols, atol=1e-4)
  np.testing.assert_allclose(pts[:, 1] / pts[:, 2] * fy + cy, rows, atol=1e-4)
  assert colors.dtype == np.uint8
  np.testing.assert_array_equal(colors, image[valid])
  exports.save_ply(tmp_path / "plain.ply", pts)
  plain, none = exports.load_ply(tmp_path / "plain.ply")
  np.testing.assert_array_equal(plain, pts)
  assert none is None


def test_load_ply_refuses_other_layouts_naming_the_file(tmp_path):
  good = tmp_path / "good.ply"
  exports.save_ply(good, np.ones((4, 3), np.float32))
  header, body = good.read_bytes().split(b"end_header\n")
  cases = {"ascii.ply": b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                        b"property float z\nend_header\n1 2 3\n",
           "big.ply": header.replace(b"binary_little_endian", b"binary_big_endian") + b"end_header\n" + body,
           "short.ply": header + b"end_header\n" + body[:-1],
           "noply.ply": b"PK\x03\x04 not a ply"}
  for name, data in cases.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=name):
      exports.load_ply(tmp_path / name)


def test_depth_png16_round_trips_to_the_millimetre(tmp_path):
  rng = np.random.default_rng(1)
  depth = rng.uniform(0.0, 65.0, (40, 50)).astype(np.float32)
  depth[0, :8] = (0.0, -2.0, np.nan, np.inf, 70.0, 65.535, 1.2346, 0.0002)
  exports.save_depth_png16(tmp_path / "d.png", depth)
  with Image.open(tmp_path / "d.png") as im:
    assert im.mode == "I;16" and np.asarray(im)[0, 6] == 1235  # millimetres
  loaded = exports.load_depth_png16(tmp_path / "d.png")
  assert loaded.dtype == np.float32 and loaded.shape == depth.shape
  np.testing.assert_array_equal(loaded[0, :8], np.float32([0, 0, 0, 0, 65.535, 65.535, 1.235, 0.001]))
  rest = depth.copy()
  rest[0, :8] = 1.0
  # Half a millimetre of rounding, plus float32's own spacing at 65 m (4e-6 m) on reading back.
  err = np.abs(exports.load_depth_png16(tmp_path / "d.png")[1:] - rest[1:].astype(np.float64))
  assert err.max() <= 0.0005 + 65 * np.finfo(np.float32).eps
  assert err.max() > 0.0004  # the random depths did fall between millimetres
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "eight.png")
  with pytest.raises(ValueError, match="eight.png"):
    exports.load_depth_png16(tmp_path / "eight.png")


def test_save_depth_color_draws_the_map_at_its_size_with_a_colour_bar(tmp_path):
  h, w = 300, 400
  depth = np.tile(np.linspace(1.0, 9.0, w, dtype=np.float32), (h, 1))  # near (red) left, far (blue) right
  exports.save_depth_color(tmp_path / "c.png", depth)
  with Image.open(tmp_path / "c.png") as im:
    assert im.format == "PNG"
    fig = np.asarray(im.convert("RGB")).astype(int)
  assert h <= fig.shape[0] < 2 * h and w < fig.shape[1] < 2 * w
  row = fig[fig.shape[0] // 2 + 10]
  ink = (row < 250).any(-1)
  edges = np.flatnonzero(np.diff(np.concatenate([[0], ink.astype(np.int8), [0]])))
  runs = list(zip(edges[::2], edges[1::2]))
  a, b = max(runs, key=lambda r: r[1] - r[0])
  assert abs((b - a) - w) <= 3  # the map at its own width, the only picture panel
  near, far = row[a + 2], row[b - 3]
  assert near[0] > 3 * near[2] and far[2] > far[0]  # turbo: red near, blue far
  bar = [(c, d) for c, d in runs if c > b]
  assert bar, "no colour bar right of the map"
  column = fig[:, (bar[0][0] + bar[0][1]) // 2]
  assert len(np.unique(column, axis=0)) > 50  # the bar's gradient from near to far


def jpeg(path, size=(64, 48), orientation=None, **tags):
  """A JPEG with the Exif IFD tags given by their PIL.ExifTags names."""
  exif = Image.Exif()
  if orientation:
    exif[ExifTags.Base.Orientation] = orientation
  ifd = exif.get_ifd(ExifTags.IFD.Exif)
  for name, value in tags.items():
    ifd[ExifTags.Base[name]] = value
  Image.new("RGB", size, (90, 120, 150)).save(path, exif=exif)
  return path


def test_focal_from_exif_35mm_equivalent(tmp_path):
  fx, how = camera.focal_from_exif(jpeg(tmp_path / "a.jpg", FocalLengthIn35mmFilm=26))
  assert fx == pytest.approx(26 / 36 * 64)
  assert "FocalLengthIn35mmFilm 26 mm" in how and "64x48" in how
  # Turned upright (EXIF orientation 6): 48 wide, 64 high; the long side still spans 36 mm.
  fx, how = camera.focal_from_exif(jpeg(tmp_path / "r.jpg", orientation=6, FocalLengthIn35mmFilm=26))
  assert fx == pytest.approx(26 / 36 * 64) and "48x64" in how
  with Image.open(tmp_path / "a.jpg") as im:
    assert camera.focal_from_exif(im)[0] == pytest.approx(26 / 36 * 64)


def test_focal_from_exif_focal_length_and_sensor_resolution(tmp_path):
  """4.25 mm lens, 200 px/mm sensor, photo resized from 640x480 to 64x48: fx 4.25 * 200 / 10 px."""
  full = dict(FocalLength=IFDRational(425, 100), ExifImageWidth=640, ExifImageHeight=480)
  fx, how = camera.focal_from_exif(jpeg(tmp_path / "cm.jpg", FocalPlaneXResolution=2000,
                                        FocalPlaneResolutionUnit=3, **full))
  assert fx == pytest.approx(85.0) and "FocalLength 4.25 mm" in how
  fx, _ = camera.focal_from_exif(jpeg(tmp_path / "in.jpg", FocalPlaneXResolution=5080,
                                      FocalPlaneResolutionUnit=2, **full))
  assert fx == pytest.approx(85.0)
  fx, _ = camera.focal_from_exif(jpeg(tmp_path / "default.jpg", FocalPlaneXResolution=5080, **full))
  assert fx == pytest.approx(85.0)  # no unit: inches, the EXIF default
  # Turned: the upright width lies along the sensor's y axis.
  fx, how = camera.focal_from_exif(jpeg(tmp_path / "r.jpg", orientation=8, FocalPlaneXResolution=2000,
                                        FocalPlaneYResolution=1000, FocalPlaneResolutionUnit=3, **full))
  assert fx == pytest.approx(42.5) and "48x64" in how
  # The 35 mm equivalent wins when both are there.
  assert camera.focal_from_exif(jpeg(tmp_path / "both.jpg", FocalLengthIn35mmFilm=26, FocalPlaneXResolution=2000,
                                     FocalPlaneResolutionUnit=3, **full))[0] == pytest.approx(26 / 36 * 64)


def test_focal_from_exif_none_without_the_tags(tmp_path):
  Image.new("RGB", (64, 48)).save(tmp_path / "plain.jpg")
  assert camera.focal_from_exif(tmp_path / "plain.jpg") is None
  assert camera.focal_from_exif(jpeg(tmp_path / "lens.jpg", FocalLength=IFDRational(425, 100))) is None
  assert camera.focal_from_exif(jpeg(tmp_path / "unitless.jpg", FocalLength=IFDRational(425, 100),
                                     FocalPlaneXResolution=2000, FocalPlaneResolutionUnit=1)) is None
  assert "fx" in camera.FX_HELP and "calibrateCamera" in camera.FX_HELP
