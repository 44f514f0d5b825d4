"""DepthLM's 3-D questions about marked pixels, generated from any depth record.

Each kind is a question template, the marks it draws (DepthLM's arrows: red, then blue) and how
its answer follows from the marked pixels' 3-D points (camera frame, from z-depth and the
intrinsics at the image's resolution):

  depth           how far the red-arrow point is from the camera (z-depth, the benchmark's depth)
  principal_axis  its distance along the camera's principal axis, asked as such (z as well)
  two_points      the distance in metres between the red- and the blue-arrow points

Answers use DepthLM's reply layout (<think> ... </think> then <answer> number </answer>), so one
parser (`tasks.depthlm.parse_answer`) reads them all.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from depthvlm_jax.data import text, transforms

BLUE = (0, 0, 255)
MIN_SEPARATION = 12  # px between two marked points, so that their arrows never touch
_FORMAT = ("Output the thinking process in <think> </think> and final answer (the meter number only, "
           "without the unit) in <answer> </answer> tags.")


@dataclasses.dataclass(frozen=True)
class Kind:
  name: str
  question: str
  template: str  # the reply, with {d:.2f} for the answer
  marks: int
  value: Callable[[np.ndarray], float]  # [marks, 3] camera-frame points -> the answer in metres

  def answer(self, d: float) -> str:
    return self.template.format(d=d)


def _reply(sentence: str) -> str:
  """DepthLM's reply layout around a reasoning sentence."""
  return f"<think> {sentence} </think>\n\n<answer> {{d:.2f}} </answer>"


KINDS = {
    "depth": Kind("depth", text.DEPTHLM_QUESTION, text.DEPTHLM_ANSWER, 1, lambda p: float(p[0, 2])),
    "principal_axis": Kind(
        "principal_axis", "Given this image, how far is the point pointed by the red arrow from the camera, measured "
        f"along the camera's principal axis? {_FORMAT}",
        _reply("Along the principal axis, the point is around {d:.2f} meters from the camera."), 1,
        lambda p: float(p[0, 2])),
    "two_points": Kind(
        "two_points", "Given this image, how far apart are the point pointed by the red arrow and the point pointed "
        f"by the blue arrow? {_FORMAT}", _reply("The two points are around {d:.2f} meters apart."), 2,
        lambda p: float(np.linalg.norm(p[0] - p[1]))),
}


def get(name: str) -> Kind:
  if name not in KINDS:
    raise ValueError(f"unknown question kind {name!r}; choose from {sorted(KINDS)}")
  return KINDS[name]


def camera_points(xyz: np.ndarray, intrinsics) -> np.ndarray:
  """[N, 3] (col, row, z-depth) -> [N, 3] camera-frame points (x right, y down, z forward)."""
  fx, fy, cx, cy = intrinsics
  xyz = np.asarray(xyz, np.float64)
  z = xyz[:, 2]
  return np.stack([(xyz[:, 0] - cx) / fx * z, (xyz[:, 1] - cy) / fy * z, z], axis=-1)


def mark(rgb: np.ndarray, xy: np.ndarray) -> np.ndarray:
  """A copy of rgb with an arrow at each of the integer pixels xy [marks, 2+] (red, then blue)."""
  for (x, y), colour in zip(np.asarray(xy)[:, :2], (transforms.ARROW_COLOR, BLUE)):
    rgb = transforms.draw_arrow(rgb, int(x), int(y), colour)
  return rgb


def ask(kind: Kind, rgb: np.ndarray, xyz: np.ndarray, intrinsics) -> tuple[np.ndarray, str, float]:
  """The marked image, the question and the true answer for `kind.marks` labelled pixels
  xyz [marks, 3] (integer col, row and z-depth)."""
  return mark(rgb, xyz), kind.question, kind.value(camera_points(xyz, intrinsics))


def sample(kind: Kind, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """`kind.marks` distinct labelled pixels from candidates [N, 3] (col, row, z), the second at
  least MIN_SEPARATION px from the first; raises ValueError when there are not enough."""
  first = candidates[rng.integers(len(candidates))]
  if kind.marks == 1:
    return first[None]
  far = candidates[np.hypot(candidates[:, 0] - first[0], candidates[:, 1] - first[1]) >= MIN_SEPARATION]
  if not len(far):
    raise ValueError(f"no second labelled pixel lies {MIN_SEPARATION} px or more from the first")
  return np.stack([first, far[rng.integers(len(far))]])


def longest_texts(kinds: Sequence[Kind]) -> list[tuple[str, str]]:
  """(question, answer) pairs with the longest answers each kind gives (sizes the batch)."""
  return [(k.question, k.answer(d)) for k in kinds for d in (0.01, 9.99, 99.99, 999.99)]
