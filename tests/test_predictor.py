"""The predictor: one prefill for depth and the first token, transformers' greedy text, sizes and
metres kept, DepthLM's arrows where the points are."""

import jax
import numpy as np
import pytest

from hf_utils import hf_model, params_from_hf, tiny, torch
import depthvlm_jax as dvlm
from depthvlm_jax import tasks
from depthvlm_jax.data import transforms
from depthvlm_jax.infer import predictor as predictor_lib
from depthvlm_jax.infer.predictor import Predictor, Settings
from depthvlm_jax.model import depth_head, vision


@pytest.fixture(scope="module")
def pair():
  cfg = tiny()
  hf = hf_model(cfg, seed=2)
  params = {**params_from_hf(hf, cfg), "depth_head": dvlm.init_params(cfg, 1)["depth_head"]}
  return cfg, hf, params


def counting(monkeypatch, cls, name="__call__"):
  """Counts the calls of a module's method while it is traced (each jit traces once)."""
  calls = []
  original = getattr(cls, name)

  def wrapped(self, *args, **kwargs):
    calls.append(1)
    return original(self, *args, **kwargs)

  monkeypatch.setattr(cls, name, wrapped)
  return calls


def test_one_prefill_gives_depth_and_the_text_equals_transformers_greedy(pair, monkeypatch):
  cfg, hf, params = pair
  p = Predictor(dvlm.DepthVLM(cfg), params, tasks.get("depthvlm"), Settings(max_new_tokens=12, bucket_multiple=32))
  rgb = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
  jax.clear_caches()
  towers = counting(monkeypatch, vision.VisionTower)
  heads = counting(monkeypatch, depth_head.DPTHead)
  out = p.predict(rgb, fx=1000.0)  # canonical fx 1000: the image is its own canvas
  assert len(towers) == 1 and len(heads) == 1  # one vision pass and one head pass in the whole call
  assert out.depth.shape == (64, 96) and out.canonical_depth.shape == (64, 96)

  # transformers, greedy, on the same prompt and pixels.
  from hf_utils import hf_inputs  # pylint: disable=import-outside-toplevel
  ids = p._chat(p.task.prompt, (64, 96))[None].astype(np.int64)
  inputs = hf_inputs(cfg, ids, np.ones_like(ids), transforms.normalize_pixels(rgb)[None])
  with torch.no_grad():
    ref = hf.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=p.tok.eos_id,
                      pad_token_id=p.tok.pad_id)[0, ids.shape[1]:].numpy()
  assert len(set(ref.tolist())) > 2, "degenerate reference"
  assert out.text == p.tok.decode(ref, skip_special_tokens=True).strip()
  # The depth map is the head's on the same forward (a second, plain forward agrees).
  plain = p.depth_maps([rgb])[0]
  np.testing.assert_allclose(out.canonical_depth, plain, rtol=1e-4)


def test_depth_comes_back_at_the_input_size_in_metres(pair):
  """fx 500: the canonical image is twice the input; the map comes back at the input's size with
  the same values (a resize, no rescaling of depth), and the principal point placement pads the
  image symmetrically."""
  cfg, _, params = pair
  p = Predictor(dvlm.DepthVLM(cfg), params, tasks.get("depthvlm"),
                Settings(max_new_tokens=1, bucket_multiple=64, placement="principal"))
  rgb = np.random.default_rng(1).integers(0, 256, (40, 56, 3), np.uint8)
  cv = p.canvas(rgb, (500.0, 500.0, 27.5, 19.5))
  assert cv.hw == (80, 112) and cv.example.hw == (128, 128) and (cv.top, cv.left) == (24, 8)
  out = p.predict(rgb, fx=500.0)
  assert out.canonical_depth.shape == (80, 112) and out.depth.shape == (40, 56)
  assert abs(out.depth.mean() / out.canonical_depth.mean() - 1) < 0.02
  np.testing.assert_array_equal(out.depth, predictor_lib.resize_depth(out.canonical_depth, (56, 40)))
  np.testing.assert_allclose(out.canonical_depth, p.depth_maps([cv.example.rgb])[0][24:104, 8:120], rtol=1e-4)


def test_depthlm_points_get_their_arrows_at_the_canonical_pixel(pair, monkeypatch):
  cfg, _, params = pair
  p = Predictor(dvlm.DepthVLM(cfg.replace(depth_head=None)), {k: v for k, v in params.items() if k != "depth_head"},
                tasks.get("depthlm"), Settings(batch_size=2, bucket_multiple=32))
  seen = []

  def fake_generate(images, questions, max_new_tokens=None, with_depth=True):
    seen.extend(images)
    return None, [f"<answer> {1.5 + len(seen) - len(images) + i} </answer>" for i in range(len(images))]

  monkeypatch.setattr(p, "generate", fake_generate)
  rgb = np.full((48, 64, 3), 128, np.uint8)
  answers = p.query_points(rgb, 500.0, [[20, 10], [1, 1], [40, 30]])  # (1, 1): too near the border
  assert answers.asked.tolist() == [True, False, True] and len(seen) == 2
  np.testing.assert_array_equal(answers.values[[0, 2]], [1.5, 2.5])
  assert np.isnan(answers.values[1]) and answers.replies[1] == ""
  for image, (x, y) in zip(seen, [(20, 10), (40, 30)]):
    cx, cy = int(np.floor((x + 0.5) * 2 - 0.5 + 0.5)), int(np.floor((y + 0.5) * 2 - 0.5 + 0.5))
    red = np.argwhere(np.all(image == (255, 0, 0), axis=-1))
    assert sorted(map(tuple, red[:, ::-1])) == sorted(transforms.arrow_pixels(cx, cy))
  two = p.query_points(rgb, 500.0, [[[20, 10], [40, 30]]], kind="two_points")
  assert two.asked.tolist() == [True] and np.all(seen[-1] == (0, 0, 255), axis=-1).sum() == 9
