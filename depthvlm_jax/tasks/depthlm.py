"""DepthLM: the unmodified VLM answers, in text, the depth of the pixel a red arrow points at.

One labelled pixel per image view (REFERENCE: image diversity beats label density); DepthLM's
centre crop after focal normalisation as augmentation; cross-entropy on the answer only; the
answer is the number inside <answer></answer>, else the last number (a failure scores 0).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

import jax.numpy as jnp
import numpy as np

from depthvlm_jax import sharding
from depthvlm_jax.data import pipeline, text, transforms
from depthvlm_jax.data.pipeline import TaskExample
from depthvlm_jax.eval import metrics
from depthvlm_jax.infer.generate import generate
from depthvlm_jax.tasks import questions
from depthvlm_jax.tasks.text_terms import TEXT_TERMS, text_terms
from depthvlm_jax.train.step import pixels_on_device

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def parse_answer(reply: str) -> Optional[float]:
  """The depth in a generated reply: the first number inside <answer></answer>, else the last
  number anywhere; None when there is none (scored as a failure)."""
  inside = _ANSWER.search(reply)
  found = _NUMBER.findall(inside.group(1)) if inside else []
  found = found[:1] or _NUMBER.findall(reply)[-1:]
  if not found:
    return None
  value = float(found[0])
  return value if np.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class DepthLMTask:
  name: str = "depthlm"
  question: str = text.DEPTHLM_QUESTION
  # DepthLM's training crop, in canonical pixels (its release: fx 1000, 1000-1400 x 700-1200).
  crop_width: tuple[int, int] = (1000, 1400)
  crop_height: tuple[int, int] = (700, 1200)
  border: int = 5  # queried pixels keep this distance to the edges (the arrow must fit)
  # DepthLM's other 3-D questions (tasks/questions.py), drawn uniformly per training example.
  questions: tuple[str, ...] = ("depth",)
  needs_depth_head = False
  loss_names = TEXT_TERMS

  def __post_init__(self):
    for name in self.questions:
      questions.get(name)
    if not self.questions:
      raise ValueError("questions is empty: give at least one of " + str(sorted(questions.KINDS)))

  @property
  def prompt(self) -> str:
    """The question a predictor asks by default (about a marked pixel)."""
    return self.question

  def augment(self, example: transforms.Example, rng: np.random.Generator) -> transforms.Example:
    return transforms.depthlm_crop(example, rng, self.crop_width, self.crop_height)

  def example(self, example, depth, depth_valid, rng) -> TaskExample:
    dense = depth_valid if example.depth is not None else None
    kind = questions.get(self.questions[rng.integers(len(self.questions))])
    if kind.name == "depth":
      x, y, z = transforms.sample_query_point(example, rng, self.border, valid=dense)
      return TaskExample(transforms.draw_arrow(example.rgb, x, y), self.question, text.depthlm_answer(z),
                         np.array([x, y, z], np.float32))
    xyz = questions.sample(kind, transforms.query_candidates(example, self.border, valid=dense), rng)
    rgb, question, value = questions.ask(kind, example.rgb, xyz, example.intrinsics)
    return TaskExample(rgb, question, kind.answer(value), np.array([xyz[0, 0], xyz[0, 1], value], np.float32))

  def texts(self):
    kinds = [questions.get(n) for n in self.questions]
    return [(self.question, text.depthlm_answer(d)) for d in (0.01, 9.99, 99.99, 999.99)] + \
        questions.longest_texts([k for k in kinds if k.name != "depth"])

  def loss_terms(self, out, batch, names) -> dict:
    return text_terms(out, batch, names)

  parse_answer = staticmethod(parse_answer)

  def evaluator(self, model, tok, image_hw):
    """(params, batch) -> (per-image answer metrics, {"replies": [...]}) by greedy decoding."""
    prompt, _ = text.chat_tokens(tok, pipeline.num_image_tokens(image_hw, model.cfg.vision.token_size), self.question)
    longest = max(len(tok.encode(a)) for _, a in self.texts()) + 2

    def evaluate(params, batch):
      images = batch["image"]
      ids = jnp.broadcast_to(jnp.asarray(prompt), (images.shape[0], len(prompt)))
      out = generate(model, params, ids, pixels_on_device(images), max_new_tokens=longest,
                     eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
      replies = [tok.decode(np.asarray(row), skip_special_tokens=True) for row in sharding.to_host(out.tokens)]
      host = {k: sharding.to_host(batch[k]) for k in ("query", "weight")}
      answers = [parse_answer(r) for r in replies]
      return metrics.text_answers(answers, host["query"][:, 2], host["weight"]), {"replies": replies}

    return evaluate

  @staticmethod
  def targets(batch: dict) -> np.ndarray:
    return batch["query"][batch["weight"] > 0, 2]

  @staticmethod
  def constant_metrics(value: float, batch: dict) -> dict[str, np.ndarray]:
    return metrics.text_answers([value] * len(batch["weight"]), batch["query"][:, 2], batch["weight"])
