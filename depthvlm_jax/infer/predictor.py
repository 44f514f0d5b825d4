"""`Predictor`: metric depth and text for users' own images.

  predictor = dvlm.Predictor.from_pretrained("out/demo")          # a workdir, or an HF directory
  out = predictor.predict(rgb, fx=1450.0)                          # out.depth: [H, W] metres
  print(out.text)

The image is focal-normalised to the model's canonical focal length (as in training), padded
whole into a bucket (infer/canvas.py), and run once: that prefill yields the depth map (DPT
head) and the first text token, and KV-cache decoding gives the rest of the text, with no
second forward. The map is cut out of the bucket and resized back to the image's own size;
depth values are metres throughout, resizing never scales them. DepthLM models (no depth head)
answer questions about marked pixels instead (`query_points`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from PIL import Image, ImageOps

from depthvlm_jax import experiment, loading, sharding
from depthvlm_jax.convert.pretrained import abstract_params
from depthvlm_jax.data import text, transforms
from depthvlm_jax.infer import canvas
from depthvlm_jax.infer.generate import generate
from depthvlm_jax.model.vlm import DepthVLM
from depthvlm_jax.tasks import questions
from depthvlm_jax.tasks.depthlm import parse_answer
from depthvlm_jax.train.step import pixels_on_device


class Answers(NamedTuple):
  """Replies to questions about marked pixels; `values` holds the parsed metres (NaN where the
  reply has no number, or where a point lies too near the border to be marked)."""
  values: np.ndarray  # [N] float64
  replies: list[str]  # "" for a point that was not asked
  asked: np.ndarray  # [N] bool


class Prediction(NamedTuple):
  depth: Optional[np.ndarray]  # [H, W] float32 metres at the input's size; None without a depth head
  text: str
  canonical_depth: Optional[np.ndarray]  # [h, w] at the canonical focal length (the model's own output)
  intrinsics: tuple[float, float, float, float]  # (fx, fy, cx, cy) of the input image


@dataclasses.dataclass(frozen=True)
class Settings:
  """How a model sees images, from its experiment config (`from_config`)."""

  canonical_fx: float = 1000.0
  placement: str = "corner"  # "principal" for models trained on principal-point windows
  buckets: tuple[tuple[int, int], ...] = ()  # static input sizes (H, W); others round up to bucket_multiple
  bucket_multiple: int = 128
  tokenizer: Optional[str] = None
  max_new_tokens: int = 32
  batch_size: int = 1  # rows per program (padded): one compile per bucket

  @classmethod
  def from_config(cls, c: ConfigDict, **overrides) -> "Settings":
    ev = c.eval
    return cls(canonical_fx=float(c.data.canonical_fx),
               placement="principal" if c.data.crop == "principal" else "corner",
               buckets=tuple(tuple(int(x) for x in b) for b in ev.get("buckets", ())),
               bucket_multiple=int(ev.get("bucket_multiple", 128)), tokenizer=c.data.tokenizer,
               max_new_tokens=int(ev.get("max_new_tokens", 32)), **overrides)


def resize_depth(depth: np.ndarray, size_wh: Sequence[int]) -> np.ndarray:
  """A float32 depth map bilinearly resized to (W, H); values stay metres."""
  w, h = size_wh
  if depth.shape == (h, w):
    return depth
  return np.asarray(Image.fromarray(np.asarray(depth, np.float32), mode="F").resize((w, h), Image.BILINEAR),
                    np.float32)


def intrinsics_of(image_hw: Sequence[int], fx: float, fy: Optional[float] = None, cx: Optional[float] = None,
                  cy: Optional[float] = None) -> tuple[float, float, float, float]:
  """(fx, fy, cx, cy); fy defaults to fx (square pixels), the principal point to the centre."""
  if not (fx and np.isfinite(fx) and fx > 0):
    raise ValueError(f"fx={fx}: the focal length must be a positive number of pixels")
  h, w = image_hw
  return (float(fx), float(fx if fy is None else fy), (w - 1) / 2 if cx is None else float(cx),
          (h - 1) / 2 if cy is None else float(cy))


class Predictor:
  """A model, its weights and its settings; `predict`, `predict_many`, `query_points`."""

  def __init__(self, model: DepthVLM, params, task, settings: Settings = Settings(), mesh=None, rules: str = "fsdp"):
    self.model, self.params, self.task, self.settings, self.mesh = model, params, task, settings, mesh
    self.rules = rules
    self.tok = text.load_tokenizer(settings.tokenizer)
    self.has_depth = model.cfg.depth_head is not None
    token = model.cfg.vision.token_size
    if settings.bucket_multiple % token or any(s % token for b in settings.buckets for s in b):
      raise ValueError(f"buckets {settings.buckets} and bucket_multiple {settings.bucket_multiple} must be "
                       f"multiples of {token} (one image token covers {token}x{token} pixels)")
    answers = list(task.texts()) + questions.longest_texts(list(questions.KINDS.values()))
    self.answer_tokens = max(len(self.tok.encode(a)) for _, a in answers) + 2  # + <|im_end|> and a spare
    self._depth = jax.jit(lambda p, ids, images: model.apply({"params": p}, ids, pixels_on_device(images)).depth)

  @classmethod
  def from_pretrained(cls, path: str, config: Optional[ConfigDict] = None, *, step: Optional[int] = None,
                      mesh=None, **settings) -> "Predictor":
    """A workdir (its latest checkpoint and its own settings), one of its checkpoints, or a Hugging
    Face directory with the experiment `config` it was trained with (defaults: canonical fx 1000,
    the DepthVLM task with a depth head, else DepthLM; the directory's tokenizer.json)."""
    model, params = loading.load_pretrained(path, step=step)
    c = loading.experiment_config(loading.resolve(path, step)[0]) or config
    if c is None:
      c = experiment.base_config()
      c.task = "depthvlm" if model.cfg.depth_head is not None else "depthlm"
      if os.path.isfile(os.path.join(path, "tokenizer.json")):
        c.data.tokenizer = path
    if mesh is not None:
      params = jax.device_put(params, sharding.param_shardings(abstract_params(model.cfg), mesh, c.mesh.rules))
    return cls(model, params, experiment.task_of(c), Settings.from_config(c, **settings), mesh, c.mesh.rules)

  # --- images -> canvases --------------------------------------------------------------------

  def canvas(self, rgb: np.ndarray, intrinsics, points=None, depth=None, valid=None, depth_size=None,
             key: str = "?") -> canvas.Canvas:
    """The image (and labels) focal-normalised and padded into its bucket."""
    size = depth_size or (rgb.shape[1], rgb.shape[0])
    ex = transforms.focal_normalize(rgb, depth, valid, points, intrinsics, size, self.settings.canonical_fx, key=key)
    s = self.settings
    return canvas.place(ex, s.buckets, s.bucket_multiple, s.placement)

  def _rows(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """A full batch (zero rows after the real ones), so each bucket compiles once."""
    n = -(-len(images) // self.settings.batch_size) * self.settings.batch_size
    batch = np.zeros((n, *images[0].shape), np.uint8)
    batch[:len(images)] = images
    return batch

  def _put(self, x: np.ndarray):
    if self.mesh is None:
      return jnp.asarray(x)
    spec = jax.sharding.PartitionSpec(("data", "fsdp"))
    return jax.device_put(x, jax.sharding.NamedSharding(self.mesh, spec))

  def _chat(self, question: str, hw: Sequence[int]) -> np.ndarray:
    """The chat prompt of one image of size hw and a question, ending at the assistant turn."""
    t = self.model.cfg.vision.token_size
    return text.chat_tokens(self.tok, (hw[0] // t) * (hw[1] // t), question)[0]

  def _prompt_ids(self, questions: Sequence[str], hw: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded chat prompts to a multiple of 8 tokens (few distinct lengths to compile)."""
    rows = [self._chat(q, hw) for q in questions]
    batch = text.pad_batch([(r, np.zeros(len(r), bool)) for r in rows], -(-max(map(len, rows)) // 8) * 8,
                           self.tok.pad_id)
    return batch.input_ids, batch.attention_mask

  # --- model calls ---------------------------------------------------------------------------

  def depth_maps(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """Bucket-sized uint8 images (one bucket) -> depth [N, H, W] from one forward (no text)."""
    if not self.has_depth:
      raise ValueError("this model has no depth head (a DepthLM model): ask for points with query_points")
    batch = self._rows(images)
    ids = self._chat(self.task.prompt, batch.shape[1:3])
    with self._mesh():
      depth = self._depth(self.params, self._put(np.tile(ids, (len(batch), 1))), self._put(batch))
    return sharding.to_host(depth)[:len(images)]

  def generate(self, images: Sequence[np.ndarray], questions: Sequence[str], max_new_tokens: Optional[int] = None,
               with_depth: bool = True) -> tuple[Optional[np.ndarray], list[str]]:
    """Bucket-sized images with one question each -> (depth [N, H, W] or None, replies): one prefill
    gives the depth map and the first token; the KV cache gives the rest."""
    batch = self._rows(images)
    ids, mask = self._prompt_ids(list(questions) + [questions[0]] * (len(batch) - len(images)), batch.shape[1:3])
    with self._mesh():
      out = generate(self.model, self.params, self._put(ids), pixels_on_device(self._put(batch)), self._put(mask),
                     max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
                     eos_token_id=self.tok.eos_id, pad_token_id=self.tok.pad_id, with_depth=with_depth)
    tokens = sharding.to_host(out.tokens)[:len(images)]
    replies = [self.tok.decode(row, skip_special_tokens=True).strip() for row in tokens]
    depth = None if out.depth is None else sharding.to_host(out.depth)[:len(images)]
    return depth, replies

  def _mesh(self):
    return contextlib.nullcontext() if self.mesh is None else sharding.use_mesh(self.mesh, self.rules)

  # --- public entry points -------------------------------------------------------------------

  def predict(self, image, fx: float, prompt: Optional[str] = None, *, fy: Optional[float] = None,
              cx: Optional[float] = None, cy: Optional[float] = None,
              max_new_tokens: Optional[int] = None) -> Prediction:
    """One image (uint8 [H, W, 3], a PIL image or a path) and its focal length in pixels ->
    depth at its own size (metres), the reply to `prompt` (default: the task's), and the
    canonical-resolution map."""
    rgb = load_rgb(image)
    return self.predict_many([(rgb, intrinsics_of(rgb.shape[:2], fx, fy, cx, cy))], prompt, max_new_tokens)[0]

  def predict_many(self, images: Sequence[tuple[np.ndarray, Sequence[float]]], prompt: Optional[str] = None,
                   max_new_tokens: Optional[int] = None) -> list[Prediction]:
    """(rgb, (fx, fy, cx, cy)) pairs -> predictions; images that share a bucket share prefills."""
    question = prompt or self.task.prompt
    canvases = [self.canvas(rgb, tuple(intr)) for rgb, intr in images]
    out: list[Optional[Prediction]] = [None] * len(images)
    for idx in _by_bucket(canvases).values():
      for i in range(0, len(idx), self.settings.batch_size):
        chunk = idx[i:i + self.settings.batch_size]
        depth, replies = self.generate([canvases[k].example.rgb for k in chunk], [question] * len(chunk),
                                       max_new_tokens)
        for j, k in enumerate(chunk):
          rgb, intr = images[k]
          canonical = None if depth is None else canvases[k].crop(depth[j])
          full = None if canonical is None else resize_depth(canonical, (rgb.shape[1], rgb.shape[0]))
          out[k] = Prediction(full, replies[j], canonical, tuple(float(x) for x in intr))
    return out

  def query_points(self, image, fx: float, points, kind: str = "depth", *, fy: Optional[float] = None,
                   cx: Optional[float] = None, cy: Optional[float] = None) -> Answers:
    """DepthLM: asks one question per point, each with its own arrow(s) drawn at the canonical
    resolution. points: [N, 2] (x, y) pixels of the input image, or [N, 2, 2] pairs for
    kind="two_points". Points closer than the task's border to an edge are not asked."""
    rgb = load_rgb(image)
    intr = intrinsics_of(rgb.shape[:2], fx, fy, cx, cy)
    pts = np.asarray(points, np.float32).reshape(len(points), -1, 2)
    flat = np.concatenate([pts.reshape(-1, 2), np.ones((pts.shape[0] * pts.shape[1], 1), np.float32)], axis=1)
    cv = self.canvas(rgb, intr, points=flat)
    xy = np.floor(cv.example.points[:, :2] + 0.5).astype(np.int64).reshape(pts.shape)
    return self.ask(cv, xy, questions.get(kind))

  def ask(self, cv: canvas.Canvas, xy: np.ndarray, kind: questions.Kind) -> Answers:
    """Questions of one kind about one canvas, one per group of marked pixels xy [N, marks, 2]
    (bucket coordinates), in batches that share the canvas's prefill program."""
    b = getattr(self.task, "border", 5)
    inside = lambda v, lo, n: (v >= lo + b) & (v < lo + n - b)
    asked = np.all(inside(xy[..., 0], cv.left, cv.hw[1]) & inside(xy[..., 1], cv.top, cv.hw[0]), axis=1)
    replies = [""] * len(xy)
    todo = np.flatnonzero(asked)
    for i in range(0, len(todo), self.settings.batch_size):
      chunk = todo[i:i + self.settings.batch_size]
      _, out = self.generate([questions.mark(cv.example.rgb, xy[k]) for k in chunk], [kind.question] * len(chunk),
                             self.answer_tokens, with_depth=False)
      for k, reply in zip(chunk, out):
        replies[k] = reply
    values = np.array([np.nan if (v := parse_answer(r)) is None else v for r in replies], np.float64)
    return Answers(values, replies, asked)


def _by_bucket(canvases: Sequence[canvas.Canvas]) -> dict[tuple[int, int], list[int]]:
  groups: dict[tuple[int, int], list[int]] = {}
  for k, cv in enumerate(canvases):
    groups.setdefault(cv.example.hw, []).append(k)
  return groups


def load_rgb(image) -> np.ndarray:
  """uint8 [H, W, 3] from an array, a PIL image or a path (EXIF orientation applied)."""
  if isinstance(image, np.ndarray):
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise ValueError(f"expected a uint8 [H, W, 3] RGB array, got {image.dtype} {list(image.shape)}")
    return image
  if isinstance(image, Image.Image):
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
  try:
    with Image.open(image) as im:
      return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
  except (OSError, ValueError, SyntaxError) as e:
    raise ValueError(f"{image}: cannot read the image ({e})") from e
