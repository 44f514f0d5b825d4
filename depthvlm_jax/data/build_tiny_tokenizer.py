"""Builds the tiny tokenizer shipped for the tiny model preset (vocab 512): a byte-level BPE
trained on the project's own prompts and answers, with Qwen's chat special tokens at the ids
the preset expects. Deterministic: rerunning rewrites the same file.

  python -m depthvlm_jax.data.build_tiny_tokenizer [out_dir]
"""

from __future__ import annotations

import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from depthvlm_jax.data import text

NUM_NORMAL_TOKENS = 490  # 256 bytes + merges
VOCAB_SIZE = 512  # the tiny preset's text.vocab_size
SPECIAL_IDS = {
    "<|endoftext|>": 495, "<|im_start|>": 496, "<|im_end|>": 497,
    "<|vision_start|>": 498, "<|vision_end|>": 499, "<|image_pad|>": 500, "<|video_pad|>": 501,
}
_WORDS = ("user assistant system You are a helpful assistant. What is the depth of this point? "
          "The image shows a room, a street, a car, a table, a chair, a wall and the floor. "
          "How far is it from the camera in meters? Yes, no, near, far, left, right, up, down.")


def corpus() -> list[str]:
  """The fixed texts, DepthLM answers over a spread of depths, and a few generic sentences."""
  depths = [0.01 * i for i in range(0, 1000, 7)] + [1.0 * i + 0.37 * (i % 3) for i in range(10, 121)]
  return ([text.DEPTHVLM_PROMPT, text.DEPTHVLM_REPLY, text.DEPTHLM_QUESTION, _WORDS]
          + [text.depthlm_answer(d) for d in depths])


def build() -> Tokenizer:
  tok = Tokenizer(models.BPE())
  # Digits one by one, as Qwen's pre-tokeniser does, then byte-level (lossless) pieces.
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=NUM_NORMAL_TOKENS, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(corpus(), trainer=trainer)
  # Specials (and reserved fillers, so that ids 0..511 all exist) at fixed ids: put them in the
  # model's vocabulary, where the added-token table then finds them.
  spec = json.loads(tok.to_str())
  vocab = spec["model"]["vocab"]
  by_id = {i: t for t, i in SPECIAL_IDS.items()}
  for i in range(len(vocab), VOCAB_SIZE):
    by_id.setdefault(i, f"<|reserved_{i}|>")
  vocab.update({t: i for i, t in by_id.items()})
  spec["added_tokens"] = [
      dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
      for i, t in sorted(by_id.items())]
  tok = Tokenizer.from_str(json.dumps(spec))
  for t, i in SPECIAL_IDS.items():
    assert tok.token_to_id(t) == i, (t, tok.token_to_id(t), i)
  assert tok.get_vocab_size() == VOCAB_SIZE
  return tok


def main(out_dir: str = text.TINY_TOKENIZER_DIR) -> None:
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "tokenizer.json")
  build().save(path, pretty=True)
  print(f"wrote {path}")


if __name__ == "__main__":
  main(*sys.argv[1:])
