"""Text for both methods: fixed prompts and answers, Qwen3-VL's chat layout, label masks.

The chat layout is the Qwen chat template as both releases render it, with the default system
turn first (the image before the text in the user turn; every `<|im_end|>` followed by "\\n"):

  <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
  <|im_start|>user\\n<|vision_start|><|image_pad|>*N<|vision_end|>{question}<|im_end|>\\n
  <|im_start|>assistant\\n{answer}<|im_end|>\\n

The system turn matters beyond text: DepthVLM's head reads the LLM states at the image tokens,
which attend to it, so leaving it out changes an imported checkpoint's depth maps. Only the
answer and the assistant's closing `<|im_end|>` carry loss (so the model learns to stop);
DepthLM's release also trained on the system and user text. Tokenisers are loaded with
the `tokenizers` library from a `tokenizer.json` (Qwen's or the shipped tiny one).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence

import numpy as np
import tokenizers

DEPTHVLM_PROMPT = ("Given this image, estimate the metric depth (in meters, rounded to two decimal "
                   "places) for every pixel of the image.")
DEPTHVLM_REPLY = "OK, I will estimate the depth map of this image."
DEPTHLM_QUESTION = ("Given this image, how far is the point pointed by the red arrow from the camera? "
                    "Output the thinking process in <think> </think> and final answer (the meter number "
                    "only, without the unit) in <answer> </answer> tags.")
DEPTHLM_ANSWER = ("<think> The point is around {d:.2f} meters away from the camera. </think>\n\n"
                  "<answer> {d:.2f} </answer>")

DEFAULT_SYSTEM = "You are a helpful assistant."
IGNORE_ID = -100  # label of a position that carries no loss
TINY_TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "tiny_tokenizer")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")


def depthlm_answer(depth_m: float) -> str:
  return DEPTHLM_ANSWER.format(d=depth_m)


class Tokenizer:
  """A `tokenizers.Tokenizer` with the Qwen chat special ids. pad is `<|endoftext|>` and eos
  `<|im_end|>`, as in Qwen3-VL-Instruct's configs."""

  def __init__(self, tok: tokenizers.Tokenizer):
    self._tok = tok
    ids = {}
    for t in SPECIAL_TOKENS:
      ids[t] = tok.token_to_id(t)
      if ids[t] is None:
        raise ValueError(f"tokenizer has no special token {t}; a Qwen-style tokenizer.json is needed")
    self.pad_id = ids["<|endoftext|>"]
    self.im_start, self.im_end = ids["<|im_start|>"], ids["<|im_end|>"]
    self.eos_id = self.im_end
    self.vision_start, self.vision_end = ids["<|vision_start|>"], ids["<|vision_end|>"]
    self.image_pad, self.video_pad = ids["<|image_pad|>"], ids["<|video_pad|>"]

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    """Special tokens written in the text become their ids; no BOS/EOS is added."""
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> Optional[int]:
    return self._tok.token_to_id(token)


def load_tokenizer(path: Optional[str] = None) -> Tokenizer:
  """A directory holding `tokenizer.json` (or the file itself); None = the shipped tiny one."""
  path = TINY_TOKENIZER_DIR if path is None else path
  if os.path.isdir(path):
    path = os.path.join(path, "tokenizer.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no tokenizer.json at {path}")
  return Tokenizer(tokenizers.Tokenizer.from_file(path))


def chat_tokens(tok: Tokenizer, num_image_tokens: int, question: str, answer: Optional[str] = None,
                system: Optional[str] = DEFAULT_SYSTEM) -> tuple[np.ndarray, np.ndarray]:
  """(input_ids int32 [L], loss_mask bool [L]) of the system turn (None: none), one image +
  question, and the answer.

  With answer=None the ids end at the generation prompt "<|im_start|>assistant\\n" (inference).
  Pieces are encoded separately at special-token boundaries, which the tokenizer splits on
  anyway, so the ids equal those of encoding the whole templated string.
  """
  head = "" if system is None else f"<|im_start|>system\n{system}<|im_end|>\n"
  parts = [
      (tok.encode(f"{head}<|im_start|>user\n<|vision_start|>"), False),
      ([tok.image_pad] * num_image_tokens, False),
      (tok.encode(f"<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"), False),
  ]
  if answer is not None:
    parts += [(tok.encode(answer) + [tok.im_end], True), (tok.encode("\n"), False)]
  ids = np.concatenate([np.asarray(p, np.int32) for p, _ in parts])
  mask = np.concatenate([np.full(len(p), m, bool) for p, m in parts])
  return ids, mask


class TextBatch(NamedTuple):
  """Right-padded token batch. labels[b, t] is the target of the logits at position t, i.e.
  input_ids[b, t + 1] where that token carries loss, else IGNORE_ID (already shifted: the loss
  compares logits[:, t] with labels[:, t] and weights by labels != IGNORE_ID)."""

  input_ids: np.ndarray  # int32 [B, L]
  attention_mask: np.ndarray  # int32 [B, L], 1 on real tokens
  labels: np.ndarray  # int32 [B, L]


def pad_batch(examples: Sequence[tuple[np.ndarray, np.ndarray]], length: int, pad_id: int) -> TextBatch:
  """Stacks (ids, loss_mask) pairs to a static length; a longer sequence is an error (cutting
  it would silently drop the answer it is trained on)."""
  b = len(examples)
  input_ids = np.full((b, length), pad_id, np.int32)
  attention_mask = np.zeros((b, length), np.int32)
  labels = np.full((b, length), IGNORE_ID, np.int32)
  for i, (ids, mask) in enumerate(examples):
    n = len(ids)
    if n > length:
      raise ValueError(f"sequence {i} has {n} tokens, more than the batch length {length}")
    input_ids[i, :n] = ids
    attention_mask[i, :n] = 1
    labels[i, :n - 1] = np.where(mask[1:], ids[1:], IGNORE_ID)
  return TextBatch(input_ids, attention_mask, labels)
