"""The benchmark runner on the real fixture sets: both protocols, whole images, the baselines."""

import hashlib
import json

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

import depthvlm_jax as dvlm
from depthvlm_jax import tasks
from depthvlm_jax.data import shards
from depthvlm_jax.data.records import RecordError
from depthvlm_jax.eval import benchmark
from depthvlm_jax.infer.predictor import Predictor, Settings
from depthvlm_jax.tasks import questions
from test_ingest import bench_records, ibims_records


def digest(a: np.ndarray) -> str:
  return hashlib.sha1(a.tobytes()).hexdigest()


class Oracle(Predictor):
  """Returns each image's ground truth at the canonical resolution (sparse labels painted in),
  and remembers the canvases the runner built."""

  def __init__(self, **settings):
    super().__init__(dvlm.DepthVLM(dvlm.get_config("tiny")), None, tasks.get("depthvlm"), Settings(**settings))
    self.truth, self.canvases, self.calls = {}, [], 0

  def canvas(self, *args, **kwargs):
    cv = super().canvas(*args, **kwargs)
    ex = cv.example
    depth = ex.depth.copy() if ex.depth is not None else np.full(ex.hw, 7.0, np.float32)
    if ex.depth is None:
      px = np.floor(ex.points[:, :2] + 0.5).astype(int)
      depth[px[:, 1], px[:, 0]] = ex.points[:, 2]
    self.truth[digest(ex.rgb)] = depth
    self.canvases.append(cv)
    return cv

  def depth_maps(self, images):
    self.calls += 1
    return np.stack([self.truth[digest(im)] for im in images])


@pytest.fixture(scope="module")
def fixture_sets(tmp_path_factory):
  root = tmp_path_factory.mktemp("bench")
  return [shards.write_shards(bench_records(), root / "scannetpp", "scannetpp")[0],
          shards.write_shards(ibims_records("z"), root / "ibims", "ibims")[0]]


def test_ground_truth_scores_perfectly_on_both_protocols(fixture_sets):
  oracle = Oracle(batch_size=4)
  results = benchmark.run(oracle, fixture_sets, benchmark.Options(train_median=2.5), progress=False)
  assert results["images"] == 12 and not results["skipped"]
  dense, sparse = results["protocols"]["dense"], results["protocols"]["sparse"]
  assert set(dense["datasets"]) == {"scannetpp"}  # iBims (DepthLM format) has points only
  assert set(sparse["datasets"]) == {"scannetpp", "ibims"}
  for row in list(dense["datasets"].values()) + list(sparse["datasets"].values()):
    assert row["delta1"] == 1.0 and row["abs_rel"] == 0.0 and row["rmse"] == 0.0, row
    assert row["always_2m/delta1"] < 0.6 and "train_median/delta1" in row
  assert dense["datasets"]["scannetpp"]["flying_points"] == 0.0
  assert sparse["domains"]["indoor"]["datasets"] == 2 and sparse["average"]["delta1"] == 1.0
  # Whole images: iBims' living room becomes 1163x872 at fx 1000 and keeps all 100 points.
  room = [cv for cv in oracle.canvases if cv.example.key.endswith("livingroom_01")][0]
  assert room.hw == (872, 1163) and room.example.hw[0] >= 872 and room.example.hw[1] >= 1163
  assert len(room.example.points) == 100 and room.example.pixel_mask.sum() == 872 * 1163
  # Buckets: sides rounded up to 128 px, one program each, batches of 4: ScanNet++ 4 + 2 images,
  # iBims 4 + 1 at 1144x858 and the living room alone.
  assert {cv.example.hw for cv in oracle.canvases} == {(1024, 1408), (896, 1152), (896, 1280)}
  assert oracle.calls == 5
  table = benchmark.markdown(results)
  assert "### dense" in table and "### sparse" in table and "| **average** |" in table
  json.dumps(results, allow_nan=False)  # results are valid JSON (no NaN)


def test_a_wrong_scale_a_bad_record_and_median_alignment(fixture_sets, tmp_path):
  """A map 1.3x the truth fails delta1 everywhere; median alignment recovers it; a bad record is
  skipped, counted and named (or stops the run when asked)."""
  class Far(Oracle):
    def depth_maps(self, images):
      return 1.3 * super().depth_maps(images)

  plain = benchmark.run(Far(), fixture_sets[:1], benchmark.Options(), progress=False)["protocols"]
  assert plain["dense"]["datasets"]["scannetpp"]["delta1"] == 0.0
  assert plain["dense"]["datasets"]["scannetpp"]["abs_rel"] == pytest.approx(0.3, abs=1e-6)
  broken = tmp_path / "broken-00000-of-00001.array_record"
  writer = ArrayRecordWriter(str(broken), shards.WRITER_OPTIONS)
  writer.write(b"not a record")
  writer.close()
  aligned = benchmark.run(Far(), fixture_sets[:1] + [str(broken)], benchmark.Options(align="median"), progress=False)
  assert aligned["protocols"]["sparse"]["datasets"]["scannetpp"]["delta1"] == 1.0
  assert aligned["images"] == 6 and aligned["skipped"] == {str(broken): 1}
  with pytest.raises(RecordError, match="broken-00000-of-00001.array_record record 0"):
    benchmark.run(Far(), [str(broken)], benchmark.Options(on_bad_record="raise"), progress=False)


class TextOracle(Predictor):
  """A DepthLM model that reads its arrows and answers from the ground truth: checks where the
  runner marks points, what it asks and how it scores the replies."""

  def __init__(self):
    cfg = dvlm.get_config("tiny").replace(depth_head=None)
    super().__init__(dvlm.DepthVLM(cfg), None, tasks.get("depthlm"), Settings(batch_size=8))
    self.asked = []

  def ask(self, cv, xy, kind):
    self.cv = cv
    return super().ask(cv, xy, kind)

  def generate(self, images, prompts, max_new_tokens=None, with_depth=True):
    ex = self.cv.example
    truth = np.zeros(ex.hw)
    px = np.floor(ex.points[:, :2] + 0.5).astype(int)
    truth[px[:, 1], px[:, 0]] = ex.points[:, 2]
    replies = []
    for image, prompt in zip(images, prompts):
      tips = []
      for colour in ((255, 0, 0), (0, 0, 255)):
        rows, cols = np.nonzero(np.all(image == colour, axis=-1))
        if len(cols):
          tips.append((cols.max() + 1, rows[cols.argmax()]))
      xyz = np.array([(x, y, truth[y, x]) for x, y in tips], np.float64)
      kind = next(k for k in questions.KINDS.values() if k.question == prompt)
      self.asked.append(kind.name)
      value = kind.value(questions.camera_points(xyz, ex.intrinsics))
      replies.append(f"<think> about 3 m </think>\n\n<answer> {value:.4f} </answer>")
    return None, replies


def test_depthlm_answers_in_text_at_every_labelled_point(fixture_sets):
  oracle = TextOracle()
  options = benchmark.Options(questions=("two_points",), questions_per_image=3, points_per_image=20, train_median=3.0)
  results = benchmark.run(oracle, fixture_sets[1:], options, progress=False)["protocols"]
  assert set(results) == {"sparse", "question/two_points"}  # no depth head: no dense protocol
  sparse = results["sparse"]["datasets"]["ibims"]
  assert sparse["images"] == 6 and sparse["delta1"] == 1.0 and sparse["parsed"] == 1.0
  assert sparse["abs_rel"] < 1e-3 and sparse["always_2m/delta1"] < 0.6 and "train_median/delta1" in sparse
  two = results["question/two_points"]["datasets"]["ibims"]
  assert two["delta1"] == 1.0 and two["abs_rel"] < 1e-3
  assert oracle.asked.count("depth") == 120 and oracle.asked.count("two_points") == 18
