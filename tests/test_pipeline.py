"""grain pipelines: metric depth survives, labels/markers are exact, state restores, bad input."""

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from depthvlm_jax import tasks
from depthvlm_jax.data import pipeline, shards, text, transforms
from depthvlm_jax.data.records import DepthRecord, RecordError, encode_png


def make_record(i: int, w=300, h=200, fx=600.0, offset=1.0) -> DepthRecord:
  """A record whose depth encodes its pixel: z = offset + row/100 + col/10000 (unique per pixel)."""
  rng = np.random.default_rng(i)
  rows, cols = np.mgrid[0:h, 0:w]
  depth = (offset + rows / 100 + cols / 10000).astype(np.float32)
  pts = np.array([[c, r, depth[r, c]] for c, r in rng.integers([20, 20], [w - 20, h - 20], (10, 2))], np.float32)
  return DepthRecord(key=f"test/{i}", image=encode_png(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)),
                     image_size=(w, h), intrinsics=(fx, fx, (w - 1) / 2, (h - 1) / 2), depth_size=(w, h),
                     dataset="test", domain="indoor", depth_range=(0.1, 10.0), depth=depth, points=pts,
                     scene_id="s", frame_id=str(i)).validate()


@pytest.fixture(scope="module")
def shard_glob(tmp_path_factory):
  out = tmp_path_factory.mktemp("shards")
  shards.write_shards((make_record(i) for i in range(12)), out, "test", num_shards=2)
  return str(out / "*.array_record")


def config(glob, **kw):
  base = dict(task=tasks.get("depthvlm"), sources=(pipeline.Source(glob),), image_hw=(288, 416), batch_size=2, seed=3)
  base.update(kw)
  return pipeline.PipelineConfig(**base)


def test_depthvlm_batches_keep_metric_depth_and_scale_intrinsics(shard_glob):
  """300x200 at fx=600 -> 500x333 at fx=1000 -> centre crop 288x416 (top 22, left 42)."""
  batch = next(iter(pipeline.build(config(shard_glob, train=False, shuffle=False))))
  assert batch["image"].shape == (2, 288, 416, 3) and batch["depth"].shape == (2, 288, 416)
  nearest = lambda n_out, n_in: np.minimum((2 * np.arange(n_out) + 1) * n_in // (2 * n_out), n_in - 1)
  src_rows = nearest(333, 200)[22:22 + 288]
  src_cols = nearest(500, 300)[42:42 + 416]
  expected = (1.0 + src_rows[:, None] / 100 + src_cols[None, :] / 10000).astype(np.float32)
  for b in range(2):
    np.testing.assert_array_equal(batch["depth"][b], expected)  # metric values untouched
    assert batch["depth_valid"][b].all()
    np.testing.assert_allclose(batch["intrinsics"][b],
                               [600 * 500 / 300, 600 * 333 / 200, 150 * 500 / 300 - 0.5 - 42,
                                100 * 333 / 200 - 0.5 - 22], rtol=1e-6)
    pts, pv = batch["points"][b], batch["points_valid"][b]
    px = np.floor(pts[pv, :2] + 0.5).astype(int)
    assert pv.sum() >= 5
    np.testing.assert_array_equal(batch["depth"][b][px[:, 1], px[:, 0]], pts[pv, 2])  # points land on their depth
  assert pipeline.skipped_in(batch) == 0


def test_depthvlm_labels_are_the_fixed_reply(shard_glob):
  cfg = config(shard_glob)
  batch = next(iter(pipeline.build(cfg)))
  tok = text.load_tokenizer()
  for b in range(2):
    labels = batch["labels"][b]
    assert tok.decode(labels[labels != text.IGNORE_ID], skip_special_tokens=True) == text.DEPTHVLM_REPLY
    n_img = int(np.sum(batch["input_ids"][b] == tok.image_pad))
    assert n_img == (288 // 32) * (416 // 32)


def test_depthlm_marker_query_and_answer_agree(shard_glob):
  batch = next(iter(pipeline.build(config(shard_glob, task=tasks.get("depthlm"), image_hw=(640, 960)))))
  tok = text.load_tokenizer()
  for b in range(2):
    x, y, z = batch["query"][b]
    x, y = int(x), int(y)
    img = batch["image"][b]
    for col, row in transforms.arrow_pixels(x, y):
      assert tuple(img[row, col]) == transforms.ARROW_COLOR
    assert tuple(img[y, x]) != transforms.ARROW_COLOR  # the query pixel is not painted (images avoid 255)
    assert batch["depth"][b][y, x] == pytest.approx(z)
    labels = batch["labels"][b]
    answer = tok.decode(labels[labels != text.IGNORE_ID], skip_special_tokens=True)
    assert answer == text.depthlm_answer(z)
    assert tasks.depthlm.parse_answer(answer) == pytest.approx(round(float(z), 2))


def test_restored_iterator_state_gives_the_next_batches_with_two_workers(shard_glob):
  cfg = config(shard_glob, worker_count=2, task=tasks.get("depthlm"), image_hw=(640, 960))
  it = iter(pipeline.build(cfg))
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(5)]
  restored = iter(pipeline.build(cfg))
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_mixture_draws_from_every_source(shard_glob, tmp_path):
  shards.write_shards((make_record(100 + i, offset=6.0) for i in range(4)), tmp_path, "other")
  cfg = config(shard_glob, sources=(pipeline.Source(shard_glob, 3.0), pipeline.Source(str(tmp_path / "*"), 1.0)),
               batch_size=8, train=False)
  it = iter(pipeline.build(cfg))
  from_other = [float(b["depth"][i].min()) > 6.0 for b in (next(it), next(it), next(it)) for i in range(8)]
  assert 2 <= sum(from_other) <= 12  # weight 1 of 4: about 6 of 24


def test_mixture_proportions_follow_the_weights_not_the_sizes(tmp_path):
  """Source b has 2 records at weight 3, source a 8 records at weight 1: b must give ~75% of
  400 examples. An unweighted mix gives 50%, a size-proportional one 20%. Tiny 64x64 records
  at fx = canonical_fx (no resize); b's depth starts at 6 m, a's stays below 2 m."""
  from depthvlm_jax import tasks
  tiny_rec = dict(w=64, h=64, fx=64.0)
  shards.write_shards((make_record(200 + i, **tiny_rec) for i in range(8)), tmp_path / "a", "a")
  shards.write_shards((make_record(300 + i, offset=6.0, **tiny_rec) for i in range(2)), tmp_path / "b", "b")
  cfg = config(str(tmp_path / "a" / "*"), task=tasks.get("depthvlm"), image_hw=(64, 64), canonical_fx=64.0,
               sources=(pipeline.Source(str(tmp_path / "a" / "*"), 1.0), pipeline.Source(str(tmp_path / "b" / "*"), 3.0)),
               batch_size=16, train=False)
  it = iter(pipeline.build(cfg))
  depth_min = np.concatenate([next(it)["depth"].reshape(16, -1).min(axis=1) for _ in range(25)])
  assert ((depth_min < 2.0) | (depth_min > 5.0)).all()
  frac_b = float(np.mean(depth_min > 5.0))
  print(f"fraction from b: {frac_b:.4f}")
  assert 0.7 <= frac_b <= 0.8, frac_b


def write_raw(path, payloads):
  w = ArrayRecordWriter(str(path), "group_size:1")
  for p in payloads:
    w.write(p)
  w.close()


def test_bad_records_are_skipped_and_counted_or_raise(tmp_path):
  good = make_record(0)
  corrupt = DepthRecord(**{**good.__dict__, "key": "test/corrupt", "image": good.image[:100]})
  write_raw(tmp_path / "bad-00000-of-00001.array_record", [good.to_bytes(), corrupt.to_bytes()])
  cfg = config(str(tmp_path / "*.array_record"), shuffle=False, num_epochs=1)
  batch = next(iter(pipeline.build(cfg)))
  assert pipeline.skipped_in(batch) == 1
  assert batch["weight"].tolist() == [1.0, 0.0]
  assert not batch["depth_valid"][1].any() and (batch["labels"][1] == text.IGNORE_ID).all()
  with pytest.raises(RecordError, match=r"test/corrupt.*'image'"):
    next(iter(pipeline.build(config(str(tmp_path / "*.array_record"), shuffle=False, on_bad_record="raise"))))


def test_bad_pipeline_config_is_refused():
  with pytest.raises(ValueError, match="image_hw"):
    pipeline.build(pipeline.PipelineConfig(task=tasks.get("depthvlm"), sources=(pipeline.Source("x"),),
                                           image_hw=(100, 64)))
  with pytest.raises(ValueError, match="not a task"):
    pipeline.build(pipeline.PipelineConfig(task="dense", sources=(pipeline.Source("x"),)))


def test_synthetic_source_renders_in_the_pipeline():
  cfg = pipeline.PipelineConfig(task=tasks.get("depthvlm"), sources=(pipeline.Source(synthetic=8, synthetic_kind="outdoor"),),
                                image_hw=(192, 256),
                                batch_size=2, canonical_fx=300.0, seed=1)
  batch = next(iter(pipeline.build(cfg)))
  assert batch["image"].shape == (2, 192, 256, 3) and pipeline.skipped_in(batch) == 0
  assert batch["depth_valid"].mean() > 0.3 and batch["depth"][batch["depth_valid"]].max() > 20.0
  np.testing.assert_allclose(batch["intrinsics"][:, 0], 300.0, rtol=5e-3)


def test_to_global_splits_the_batch_over_the_mesh():
  import jax
  from depthvlm_jax import sharding
  mesh = sharding.make_mesh((2, -1, 1))
  local = {"image": np.arange(8 * 3, dtype=np.uint8).reshape(8, 3), "weight": np.ones(8, np.float32)}
  batch = pipeline.to_global(local, mesh)
  assert batch["image"].shape == (8, 3) and len(batch["image"].sharding.device_set) == jax.device_count()
  assert batch["image"].addressable_shards[0].data.shape == (8 // jax.device_count(), 3)
  np.testing.assert_array_equal(np.asarray(batch["image"]), local["image"])
