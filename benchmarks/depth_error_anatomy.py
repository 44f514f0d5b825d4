"""Where a depth model's delta1 is lost, and what a token-sized predictor could reach, as JSON.

  depthvlm-predict --model=out/demo --data=out/demo_data/eval --out=out/demo_pred
  python benchmarks/depth_error_anatomy.py --data=out/demo_data/eval --pred=out/demo_pred --canonical_fx=70

Everything is measured at the model's canonical resolution (focal length canonical_fx), where
one LLM token covers token_size x token_size pixels:
- ceiling_<k>px: delta1 of a predictor that knows the exact mean log-depth of every k x k cell
  and interpolates between cells (align-corners bilinear): what a model whose output carries no
  detail finer than k pixels can reach at best.
- with --pred: the model's delta1 as predicted ("raw"), and again with one part of its
  log-error removed: each image's median ("true_scale"), each token's mean ("true_token_means":
  only the detail inside tokens is left wrong) or all but each token's mean
  ("true_token_detail": only token-level errors are left). Per domain: the mean and mean
  absolute per-image log-scale error, and its correlation with the true log median depth
  (near -1: the model predicts one scale for every scene).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from depthvlm_jax.data import shards, transforms
from depthvlm_jax.eval import metrics
from depthvlm_jax.model.config import QWEN3_VL_TOKEN_SIZE
from depthvlm_jax.model.resize import resize_bilinear_align_corners

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "Ingested records (a directory or glob).", required=True)
flags.DEFINE_string("pred", None, "depthvlm-predict --data output (KEY.npy per record); optional.")
flags.DEFINE_float("canonical_fx", 70.0, "The model's canonical focal length (data.canonical_fx).")
flags.DEFINE_integer("token_size", QWEN3_VL_TOKEN_SIZE, "Pixels per LLM token along each axis "
                     "(model.vision: patch_size x spatial_merge_size).")

LOG_DELTA1 = float(np.log(metrics.DELTAS["delta1"]))


def cell_means(x: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
  """Mean of x over the valid pixels of each k x k cell (cells from the top left, the last ones
  partial); cells without a valid pixel take the image's mean. -> [ceil(H/k), ceil(W/k)]."""
  h, w = x.shape
  gh, gw = -(-h // k), -(-w // k)
  xs, vs = np.zeros((gh * k, gw * k)), np.zeros((gh * k, gw * k), bool)
  xs[:h, :w], vs[:h, :w] = np.where(valid, x, 0), valid
  total, count = xs.reshape(gh, k, gw, k).sum((1, 3)), vs.reshape(gh, k, gw, k).sum((1, 3))
  return np.where(count > 0, total / np.maximum(count, 1), x[valid].mean())


def interpolated(means: np.ndarray, k: int, hw) -> np.ndarray:
  """Cell means spread over the pixels: bilinear between cell centres, cropped to hw."""
  up = resize_bilinear_align_corners(jnp.asarray(means)[None, ..., None], (means.shape[0] * k, means.shape[1] * k))
  return np.asarray(up)[0, :hw[0], :hw[1], 0]


def within(err: np.ndarray) -> float:
  return float(np.mean(np.abs(err) < LOG_DELTA1))


def anatomy(rec, pred_dir) -> dict:
  fx = FLAGS.canonical_fx
  ex = transforms.focal_normalize(rec.decode_image(), rec.depth, rec.valid_mask(), None, rec.intrinsics,
                                  rec.depth_size, fx, key=rec.key)
  gt, valid = ex.depth, ex.valid & (ex.depth > 0)
  log_gt = np.log(np.where(valid, gt, 1.0))
  row = {"domain": rec.domain, "log_median_gt": float(np.median(log_gt[valid]))}
  t = FLAGS.token_size
  for k in (t, t // 2, t // 4):
    row[f"ceiling_{k}px"] = within((interpolated(cell_means(log_gt, valid, k), k, gt.shape) - log_gt)[valid])
  if pred_dir:
    pred = np.load(f"{pred_dir}/{rec.key}.npy")
    canon = transforms.focal_normalize(rec.decode_image(), pred, None, None, rec.intrinsics,
                                       (pred.shape[1], pred.shape[0]), fx, key=rec.key).depth
    ok = valid & (canon > 0)
    err = np.where(ok, np.log(np.where(ok, canon, 1.0)) - log_gt, 0.0)
    token = np.kron(cell_means(err, ok, t), np.ones((t, t)))[:gt.shape[0], :gt.shape[1]]
    scale = float(np.median(err[ok]))
    row.update(raw=within(err[ok]), true_scale=within(err[ok] - scale), true_token_means=within((err - token)[ok]),
               true_token_detail=within(token[ok]), log_scale_error=scale)
  return row


def summary(rows: list[dict]) -> dict:
  keys = [k for k in rows[0] if k not in ("domain", "log_median_gt", "log_scale_error")]
  out = {"images": len(rows), **{k: float(np.mean([r[k] for r in rows])) for k in keys}}
  if "log_scale_error" in rows[0]:
    scale = np.array([r["log_scale_error"] for r in rows])
    out.update(log_scale_error_mean=float(scale.mean()), log_scale_error_abs_mean=float(np.abs(scale).mean()))
    if len(rows) > 2:
      out["log_scale_error_corr_with_log_median_gt"] = float(np.corrcoef(scale, [r["log_median_gt"] for r in rows])[0, 1])
  return out


def main(argv):
  del argv
  rows = [anatomy(rec, FLAGS.pred) for rec in shards.iter_records(FLAGS.data)]
  if not rows:
    raise app.UsageError(f"no records in {FLAGS.data}")
  domains = sorted({r["domain"] for r in rows})
  result = {"canonical_fx": FLAGS.canonical_fx, "token_pixels": FLAGS.token_size, "all": summary(rows),
            **{d: summary([r for r in rows if r["domain"] == d]) for d in domains}}
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
