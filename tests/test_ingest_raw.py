"""Raw-dataset converters (NYUv2, KITTI, DIODE, ETH3D) on tiny files written in each dataset's own
format, and their refusal of bad input."""

import logging
import math

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from depthvlm_jax.data.ingest import diode, eth3d, kitti, nyuv2
from depthvlm_jax.data.ingest.run import ingest
from depthvlm_jax.data.records import RecordError, intrinsics_at

W, H = 16, 12


def rgb(w=W, h=H, seed=0):
  return np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)


def save_image(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def check_refused(records, field, where) -> RecordError:
  """Consuming `records` raises a RecordError for `field` whose record names `where`."""
  with pytest.raises(RecordError) as e:
    list(records)
  assert e.value.field == field, str(e.value)
  assert str(where) in e.value.record, str(e.value)
  return e.value


# --- NYUv2 ------------------------------------------------------------------------------------

SCENES = ["kitchen_0028b", "office_0004", "kitchen_0028b"]


def nyu_frames(n=3, w=W, h=H):
  """[N, H, W, 3] images and [N, H, W] depths, depth = 1 + frame + 0.1 * column."""
  images = np.stack([rgb(w, h, i) for i in range(n)])
  depths = np.stack([np.tile(np.float32(1 + i) + np.arange(w, dtype=np.float32) / 10, (h, 1)) for i in range(n)])
  return images, depths


def write_nyu(path, images, depths, layout="hdf5", scenes=SCENES, **extra):
  """The labeled .mat: MATLAB holds images [H, W, 3, N] and depths [H, W, N]; v7.3 (HDF5) shows them
  with the axes reversed."""
  arrays = {"images": images.transpose(1, 2, 3, 0), "depths": depths.transpose(1, 2, 0), **extra}
  if layout == "v5":
    scipy.io.savemat(path, {**arrays, "scenes": np.array([[s] for s in scenes], dtype=object)})
    return
  with h5py.File(path, "w") as f:
    for name, a in arrays.items():
      f[name] = a.T
    refs = f.create_dataset("scenes", (1, len(scenes)), dtype=h5py.ref_dtype)
    for i, name in enumerate(scenes):  # a cell array of MATLAB char arrays (uint16 codes)
      refs[0, i] = f.create_dataset(f"#refs#/{i}", data=np.array([[ord(c)] for c in name], np.uint16)).ref


@pytest.mark.parametrize("layout", ["hdf5", "v5"])
def test_nyuv2(tmp_path, layout):
  images, depths = nyu_frames()
  mat = tmp_path / "nyu_depth_v2_labeled.mat"
  raw = depths.copy()
  raw[:, :, :3] = 0  # the Kinect's holes, before in-painting
  write_nyu(mat, images, depths, layout, rawDepths=raw.transpose(1, 2, 0))
  scipy.io.savemat(tmp_path / "splits.mat", {"testNdxs": np.array([[3], [1]]), "trainNdxs": np.array([[2]])})
  recs = list(nyuv2.records(mat, indices="splits.mat"))  # 1-based testNdxs, in their order
  assert [r.key for r in recs] == ["nyuv2/kitchen_0028b/0002", "nyuv2/kitchen_0028b/0000"]
  for rec, i in zip(recs, [2, 0]):
    np.testing.assert_array_equal(rec.decode_image(), images[i])
    assert rec.depth.dtype == np.float32 and rec.depth[5, 7] == np.float32(1 + i + 0.7) and rec.depth[0, 0] == 1 + i
    assert rec.image_size == rec.depth_size == (W, H) and rec.valid is None and rec.depth_source_type == "z"
    assert (rec.dataset, rec.domain, rec.depth_range, rec.split) == ("nyuv2", "indoor", (0.005, 10.0), "test")
    # The calibration is for 640x480: rescaled to the 16x12 frames.
    assert rec.intrinsics == pytest.approx(intrinsics_at(nyuv2.INTRINSICS, (640, 480), (W, H)))
    assert rec.intrinsics[0] == pytest.approx(518.8579 / 40, rel=1e-6)
  assert [r.frame_id for r in nyuv2.records(mat, indices="splits.mat", split="train")] == ["0001"]
  assert [r.key for r in nyuv2.records(mat, indices=[1])] == ["nyuv2/office_0004/0001"]
  holes = list(nyuv2.records(mat, indices=[0], depth_key="rawDepths"))[0]
  assert not holes.valid_mask()[:, :3].any() and holes.valid_mask()[:, 3:].all()


def test_nyuv2_calibration_size_is_kept(tmp_path):
  images = np.zeros((1, 480, 640, 3), np.uint8)
  mat = tmp_path / "one.mat"
  write_nyu(mat, images, np.full((1, 480, 640), 2.0, np.float32), scenes=["bedroom_0001"])
  (rec,) = nyuv2.records(mat)
  assert rec.intrinsics == nyuv2.INTRINSICS == (518.85790117450188, 519.46961112127485, 325.58244941119034,
                                                253.73616633400465)


def test_nyuv2_refusals(tmp_path):
  images, depths = nyu_frames()
  mat = tmp_path / "bad.mat"
  write_nyu(mat, images, depths[:, :, : W // 2])
  check_refused(nyuv2.records(mat), "depths", mat)
  for value in (np.nan, -1.0):
    bad = depths.copy()
    bad[1, 4, 4] = value
    write_nyu(mat, images, bad)
    check_refused(nyuv2.records(mat), "depth", f"{mat}[1]")
  write_nyu(mat, images, depths)
  check_refused(nyuv2.records(mat, indices=[0, 3]), "indices", mat)
  check_refused(nyuv2.records(mat, depth_key="rawDepths"), "rawDepths", mat)
  mat.write_bytes(b"not a MATLAB file")
  check_refused(nyuv2.records(mat), "file", mat)


# --- KITTI ------------------------------------------------------------------------------------

DATE, DRIVE = "2011_09_26", "2011_09_26_drive_0002_sync"
P_RECT_02 = (721.5377, 721.5377, 609.5593, 172.854)
KW, KH = 32, 24


def kitti_tree(tmp_path, gt=(("train", 69), ("val", 70)), calibrated=(1242, 375), gt_size=(KW, KH), p_rect=P_RECT_02):
  """Raw data for frames 69-71 of one drive, ground truth for `gt` ((benchmark split, frame), ...),
  and an Eigen-style split file listing the three frames."""
  raw, gt_root = tmp_path / "raw", tmp_path / "data_depth_annotated"
  (raw / DATE).mkdir(parents=True)
  fx, fy, cx, cy = p_rect
  (raw / DATE / "calib_cam_to_cam.txt").write_text(
      "calib_time: 09-Jan-2012 13:57:47\n"
      f"S_rect_02: {calibrated[0]:e} {calibrated[1]:e}\n"
      f"P_rect_02: {fx:e} 0 {cx:e} 4.485728e+01 0 {fy:e} {cy:e} 2.163791e-01 0 0 1 2.745884e-03\n")
  for frame in (69, 70, 71):
    save_image(raw / DATE / DRIVE / "image_02" / "data" / f"{frame:010d}.png", rgb(KW, KH, frame))
  for split, frame in gt:
    d = np.zeros(gt_size[::-1], np.uint16)
    d[5, 7], d[10, 12] = 12 * 256 + 128, 90 * 256  # 12.5 m, and 90 m (beyond the 80 m range)
    save_image(gt_root / split / DRIVE / "proj_depth" / "groundtruth" / "image_02" / f"{frame:010d}.png", d)
  split_file = tmp_path / "eigen_test_files.txt"
  split_file.write_text(f"{DATE}/{DRIVE}/image_02/data/0000000069.png\n"
                        f"{DATE}/{DRIVE} 70 l\n"  # monodepth2's form
                        f"\n{DATE}/{DRIVE}/image_02/data/0000000071.png\n")
  return split_file, raw, gt_root


def test_kitti(tmp_path, caplog):
  split_file, raw, gt_root = kitti_tree(tmp_path)
  with caplog.at_level(logging.WARNING):
    recs = list(kitti.records(split_file, raw, gt_root=gt_root))
  assert [r.key for r in recs] == [f"kitti/{DRIVE}/image_02/0000000069", f"kitti/{DRIVE}/image_02/0000000070"]
  assert "skipped 1 of 3 lines" in caplog.text  # frame 71 has no ground truth
  for rec, frame in zip(recs, (69, 70)):
    np.testing.assert_array_equal(rec.decode_image(), rgb(KW, KH, frame))
    assert rec.depth[5, 7] == 12.5 and rec.depth[10, 12] == 90.0 and rec.depth.sum() == 102.5
    assert rec.valid_mask().sum() == 1  # 0 = no measurement; 90 m is past the 80 m range
    assert rec.image_size == rec.depth_size == (KW, KH) and rec.scene_id == DRIVE
    assert (rec.dataset, rec.domain, rec.depth_range, rec.depth_source_type) == ("kitti", "outdoor", (0.001, 80.0), "z")
    # S_rect_02 says 1242x375: P_rect_02 is rescaled to the 32x24 test images.
    assert rec.intrinsics == pytest.approx(intrinsics_at(P_RECT_02, (1242, 375), (KW, KH)))
  paths, count = ingest("kitti", split_file, tmp_path / "out", root=raw, gt_root=gt_root)
  assert count == 2 and len(paths) == 1


def test_kitti_calibration_size_is_kept(tmp_path):
  p_rect = (24.5, 24.5, 15.25, 11.75)  # a camera for the 32x24 test images (principal point inside)
  split_file, raw, gt_root = kitti_tree(tmp_path, calibrated=(KW, KH), p_rect=p_rect)
  rec = next(kitti.records(split_file, raw, gt_root=gt_root / "train"))  # gt_root may be a split folder
  assert rec.intrinsics == p_rect


def test_kitti_refusals(tmp_path):
  split_file, raw, gt_root = kitti_tree(tmp_path)
  check_refused(kitti.records(split_file, raw, gt_root=gt_root, strict=True), "depth", f"{split_file}:4")
  (raw / DATE / "calib_cam_to_cam.txt").unlink()
  check_refused(kitti.records(split_file, raw, gt_root=gt_root), "intrinsics", f"{split_file}:1")
  split_file, raw, gt_root = kitti_tree(tmp_path / "small", gt_size=(KW // 2, KH))
  error = check_refused(kitti.records(split_file, raw, gt_root=gt_root), "depth", f"{split_file}:1")
  assert "16x24 but the image is 32x24" in str(error)
  split_file.write_text(f"{DATE}/{DRIVE}/image_02/0000000069.png\n")
  check_refused(kitti.records(split_file, raw, gt_root=gt_root), "image", f"{split_file}:1")


# --- DIODE ------------------------------------------------------------------------------------


def diode_sample(top, domain="indoors", depth=None, mask=None, size=(KW, KH)):
  """One DIODE image, `<top>/val/<domain>/scene_00019/scan_00183/...`; depth [H, W, 1], mask [H, W]."""
  folder = top / "val" / domain / "scene_00019" / "scan_00183"
  base = folder / f"00019_00183_{domain}_000_010"
  save_image(base.with_suffix(".png"), rgb(*size))
  w, h = size
  np.save(folder / f"{base.name}_depth.npy",
          np.tile(np.arange(w, dtype=np.float32)[None, :, None] + 0.5, (h, 1, 1)) if depth is None else depth)
  np.save(folder / f"{base.name}_depth_mask.npy", np.ones((h, w), np.float32) if mask is None else mask)
  return base


def test_diode(tmp_path):
  top = tmp_path / "diode"
  mask = np.ones((KH, KW), np.float32)
  mask[3, 4] = 0
  diode_sample(top, "indoors", mask=mask)
  far = np.full((KH, KW, 1), 200.0, np.float32)
  far[0, :4] = 400.0  # beyond the scanner's 350 m
  diode_sample(top, "outdoor", depth=far)
  indoor, outdoor = diode.records(top)
  assert indoor.key == "diode/val/indoors/scene_00019/scan_00183/00019_00183_indoors_000_010"
  assert outdoor.key == "diode/val/outdoor/scene_00019/scan_00183/00019_00183_outdoor_000_010"
  assert (indoor.domain, outdoor.domain) == ("indoor", "outdoor") and indoor.scene_id == "scene_00019"
  assert indoor.depth[3, 5] == 5.5 and indoor.depth.shape == (KH, KW) and indoor.valid[3, 5]
  assert not indoor.valid[3, 4] and not indoor.valid_mask()[:, 0].any()  # masked; 0.5 m < 0.6 m
  assert indoor.valid_mask().sum() == KH * (KW - 1) - 1
  assert outdoor.valid_mask().sum() == KH * KW - 4 and outdoor.depth_range == (0.6, 350.0)
  for rec in (indoor, outdoor):
    assert rec.image_size == rec.depth_size == (KW, KH) and rec.dataset == "diode"
    assert rec.intrinsics == pytest.approx(intrinsics_at((886.81, 927.06, 512.0, 384.0), (1024, 768), (KW, KH)))
    assert rec.intrinsics[:2] == pytest.approx((886.81 / 32, 927.06 / 32))
  (deeper,) = diode.records(top / "val" / "outdoor")
  assert deeper.key == outdoor.key
  assert [r.key for r in diode.records(top / "val", root=top / "val")][0].startswith("diode/indoors/scene_00019/")
  paths, count = ingest("diode", top / "val", tmp_path / "out")
  assert count == 2


def test_diode_refusals(tmp_path):
  base = diode_sample(tmp_path / "a", depth=np.ones((KH, KW // 2, 1), np.float32))
  check_refused(diode.records(tmp_path / "a"), "depth", base.with_suffix(".png"))
  for value in (np.nan, -2.0):
    depth = np.ones((KH, KW, 1), np.float32)
    depth[2, 2] = value
    base = diode_sample(tmp_path / "b", depth=depth)
    check_refused(diode.records(tmp_path / "b"), "depth", base.with_suffix(".png"))
  base = diode_sample(tmp_path / "c", mask=np.ones((KH + 1, KW)))
  check_refused(diode.records(tmp_path / "c"), "valid", base)
  base.with_name(base.name + "_depth_mask.npy").unlink()
  check_refused(diode.records(tmp_path / "c"), "valid", base)
  flat = tmp_path / "d"
  flat.mkdir()
  np.save(flat / "x_depth.npy", np.ones((KH, KW, 1), np.float32))
  check_refused(diode.records(flat), "domain", flat / "x.png")
  check_refused(diode.records(tmp_path / "nothing_here_yet"), "depth", tmp_path / "nothing_here_yet")


# --- ETH3D ------------------------------------------------------------------------------------

# A THIN_PRISM_FISHEYE camera whose every term moves pixels (the fisheye angle up to 13 px, each of
# p1, p2, sx1, sy1 by about half a pixel), and the undistorted images' pinhole camera, on a larger canvas.
DISTORTED = (40, 30, [16.0, 16.2, 20.3, 14.8, 0.05, 0.01, 0.02, -0.015, 0.002, 0.001, 0.02, -0.02])
UNDISTORTED = (44, 32, [12.0, 12.1, 22.2, 15.9])
NAMES = ("DSC_0286.JPG", "DSC_0287.JPG")


def images_txt(folder, names, camera_id=0):
  """COLMAP images.txt: a header line per image, then its 2D points (here one, or none)."""
  lines = ["# Image list with two lines of data per image:",
           "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME"]
  for i, name in enumerate(names, 1):
    lines += [f"{i} 1 0 0 0 0.1 0.2 0.3 {camera_id} {folder}/{name}", "12.5 3.5 -1" if i == 1 else ""]
  return "\n".join(lines) + "\n"


def raw_depth(w, h, seed=0):
  """Depths 1 + 0.01 * flat index (each pixel its own value), with some +inf (no ground truth)."""
  d = 1 + 0.01 * np.arange(w * h, dtype=np.float32).reshape(h, w)
  d[np.random.default_rng(seed).random((h, w)) < 0.2] = np.inf
  return d


def eth3d_scene(top, distorted=DISTORTED, undistorted=UNDISTORTED, image_size=None, name="courtyard"):
  scene = top / name
  for folder, (w, h, params), model, images in (
      ("dslr_calibration_jpg", distorted, "THIN_PRISM_FISHEYE" if len(distorted[2]) == 12 else "PINHOLE",
       "dslr_images"),
      ("dslr_calibration_undistorted", undistorted, "PINHOLE", "dslr_images_undistorted")):
    (scene / folder).mkdir(parents=True)
    (scene / folder / "cameras.txt").write_text("# Camera list with one line of data per camera:\n"
                                                f"0 {model} {w} {h} {' '.join(map(str, params))}\n")
    (scene / folder / "images.txt").write_text(images_txt(images, NAMES))
  (scene / "ground_truth_depth" / "dslr_images").mkdir(parents=True)
  for i, file in enumerate(NAMES):
    save_image(scene / "images" / "dslr_images_undistorted" / file, rgb(*(image_size or undistorted[:2]), i))
    raw_depth(*distorted[:2], i).astype("<f4").tofile(scene / "ground_truth_depth" / "dslr_images" / file)
  return scene


def colmap_thin_prism_fisheye(params, u, v):
  """COLMAP's ThinPrismFisheyeCameraModel::WorldToImage, transcribed for one point."""
  f1, f2, c1, c2, k1, k2, p1, p2, k3, k4, sx1, sy1 = params
  r = math.sqrt(u * u + v * v)
  uu, vv = (math.atan(r) * u / r, math.atan(r) * v / r) if r > 1e-12 else (u, v)
  r2 = uu * uu + vv * vv
  radial = k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3 + k4 * r2 ** 4
  du = uu * radial + 2 * p1 * uu * vv + p2 * (r2 + 2 * uu * uu) + sx1 * r2
  dv = vv * radial + 2 * p2 * uu * vv + p1 * (r2 + 2 * vv * vv) + sy1 * r2
  return f1 * (uu + du) + c1, f2 * (vv + dv) + c2


def test_eth3d_resamples_onto_the_undistorted_camera(tmp_path):
  scene = eth3d_scene(tmp_path)
  recs = list(eth3d.records(scene))
  assert [r.key for r in recs] == ["eth3d/courtyard/DSC_0286", "eth3d/courtyard/DSC_0287"]
  (w, h, params), (tw, th, (fx, fy, cx, cy)) = DISTORTED, UNDISTORTED
  for i, rec in enumerate(recs):
    source = np.where(np.isinf(raw_depth(w, h, i)), 0, raw_depth(w, h, i))
    want = np.zeros((th, tw), np.float32)
    for row in range(th):
      for col in range(tw):  # the pixel centre's ray, through the distorted camera, in COLMAP coordinates
        x, y = colmap_thin_prism_fisheye(params, (col + 0.5 - cx) / fx, (row + 0.5 - cy) / fy)
        if 0 <= x < w and 0 <= y < h:
          want[row, col] = source[int(y), int(x)]
    np.testing.assert_array_equal(rec.depth, want)
    assert 0.6 < (rec.depth > 0).mean() < 0.85  # 20% have no ground truth, 2% fall outside
    assert rec.image_size == rec.depth_size == (tw, th) and rec.scene_id == "courtyard" and rec.frame_id[:4] == "DSC_"
    assert rec.intrinsics == (fx, fy, cx - 0.5, cy - 0.5)  # COLMAP's +0.5 pixel centres -> integer centres
    assert (rec.dataset, rec.domain, rec.depth_range, rec.depth_source_type) == ("eth3d", "mixed", (0.01, 50.0), "z")


def test_eth3d_identity_and_layouts(tmp_path):
  # A pinhole "distorted" camera equal to the undistorted one: the depth passes through unchanged.
  scene = eth3d_scene(tmp_path / "scenes", distorted=UNDISTORTED, image_size=(22, 16))
  scene_b = eth3d_scene(tmp_path / "scenes", distorted=UNDISTORTED, name="terrace")
  recs = list(eth3d.records(tmp_path / "scenes"))  # a folder of scenes
  assert [r.key for r in recs] == ["eth3d/courtyard/DSC_0286", "eth3d/courtyard/DSC_0287",
                                   "eth3d/terrace/DSC_0286", "eth3d/terrace/DSC_0287"]
  want = raw_depth(*UNDISTORTED[:2])
  np.testing.assert_array_equal(recs[0].depth, np.where(np.isinf(want), 0, want))
  # Images at half the calibrated size: intrinsics follow the image, the depth stays at the camera's.
  fx, fy, cx, cy = UNDISTORTED[2]
  assert recs[0].image_size == (22, 16) and recs[0].depth_size == (44, 32)
  assert recs[0].intrinsics == pytest.approx(intrinsics_at((fx, fy, cx - 0.5, cy - 0.5), (44, 32), (22, 16)))
  # Depth extracted apart from the images: root holds <scene>/ground_truth_depth.
  (tmp_path / "depth").mkdir()
  (scene_b / "ground_truth_depth").rename(tmp_path / "depth" / "ground_truth_depth")
  check_refused(eth3d.records(scene_b), "depth", scene_b / "images" / "dslr_images_undistorted" / NAMES[0])
  (tmp_path / "depth" / "terrace").mkdir()
  (tmp_path / "depth" / "ground_truth_depth").rename(tmp_path / "depth" / "terrace" / "ground_truth_depth")
  assert len(list(eth3d.records(scene_b, root=tmp_path / "depth"))) == 2
  paths, count = ingest("eth3d", scene, tmp_path / "out")
  assert count == 2


def test_eth3d_refusals(tmp_path):
  scene = eth3d_scene(tmp_path / "a")
  image = scene / "images" / "dslr_images_undistorted" / NAMES[0]
  depth = scene / "ground_truth_depth" / "dslr_images" / NAMES[0]
  np.zeros(10, "<f4").tofile(depth)
  assert "not the 40x30 float32 map" in str(check_refused(eth3d.records(scene), "depth", image))
  for value in (np.nan, -1.0):
    d = raw_depth(*DISTORTED[:2])
    d[3, 3] = value
    d.astype("<f4").tofile(depth)
    check_refused(eth3d.records(scene), "depth", image)
  depth.unlink()
  check_refused(eth3d.records(scene), "depth", image)
  (scene / "dslr_calibration_undistorted" / "cameras.txt").unlink()
  check_refused(eth3d.records(scene), "intrinsics", scene / "dslr_calibration_undistorted" / "cameras.txt")
  scene = eth3d_scene(tmp_path / "b")
  (scene / "dslr_calibration_undistorted" / "cameras.txt").write_text("0 PINHOLE 44 32 30.0 30.1 22.2\n")
  check_refused(eth3d.records(scene), "intrinsics", scene / "dslr_calibration_undistorted" / "cameras.txt:1")
  (scene / "dslr_calibration_undistorted" / "cameras.txt").write_text("0 THIN_PRISM_FISHEYE 40 30 " +
                                                                      " ".join(map(str, DISTORTED[2])) + "\n")
  check_refused(eth3d.records(scene), "intrinsics", scene / "images" / "dslr_images_undistorted" / NAMES[0])
