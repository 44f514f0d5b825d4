"""Prompts, the shipped tiny tokenizer, Qwen3-VL's chat layout, label masks, answer parsing."""

import numpy as np
import pytest

from depthvlm_jax.data import text
from depthvlm_jax.model.config import get_config

FIXED = [text.DEPTHVLM_PROMPT, text.DEPTHVLM_REPLY, text.DEPTHLM_QUESTION,
         *(text.depthlm_answer(d) for d in (0.0, 0.004, 1.235, 9.99, 87.5, 123.456))]


@pytest.fixture(scope="module")
def tok():
  return text.load_tokenizer()


SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def _template(n, question, answer):
  """The Qwen chat template as both releases render it: the default system turn, one image +
  question, and an answer."""
  return (SYSTEM + "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>" + question
          + "<|im_end|>\n<|im_start|>assistant\n" + answer + "<|im_end|>\n")


def test_fixed_texts():
  assert text.DEPTHLM_ANSWER.format(d=2.345) == text.depthlm_answer(2.345)
  assert text.depthlm_answer(2.5) == ("<think> The point is around 2.50 meters away from the camera. "
                                      "</think>\n\n<answer> 2.50 </answer>")
  assert text.DEPTHLM_QUESTION.startswith("Given this image, how far is the point pointed by the red arrow")
  assert text.DEPTHLM_QUESTION.endswith("(the meter number only, without the unit) in <answer> </answer> tags.")
  assert "  " not in text.DEPTHLM_QUESTION + text.DEPTHVLM_PROMPT


def test_tiny_tokenizer_special_ids_match_the_tiny_preset(tok):
  cfg = get_config("tiny")
  assert tok.vocab_size == cfg.text.vocab_size == 512
  assert (tok.vision_start, tok.vision_end, tok.image_pad, tok.video_pad) == (
      cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.image_token_id, cfg.video_token_id)
  assert (tok.pad_id, tok.im_start, tok.im_end, tok.eos_id) == (495, 496, 497, 497)
  assert tok.token_to_id("<|image_pad|>") == 500 and tok.token_to_id("<|nope|>") is None


def test_tokenizer_round_trip(tok):
  for s in FIXED + [_template(3, text.DEPTHLM_QUESTION, text.depthlm_answer(4.2)), "Déjà vu 🙂 \t x\n"]:
    assert tok.decode(tok.encode(s)) == s
  for s in FIXED:
    assert max(tok.encode(s)) < 490  # plain text only uses the trained (non-special) tokens


def test_shipped_tokenizer_is_the_builder_output(tmp_path):
  from depthvlm_jax.data import build_tiny_tokenizer
  build_tiny_tokenizer.main(str(tmp_path))
  with open(tmp_path / "tokenizer.json") as a, open(f"{text.TINY_TOKENIZER_DIR}/tokenizer.json") as b:
    assert a.read() == b.read()


@pytest.mark.parametrize("question,answer", [(text.DEPTHLM_QUESTION, text.depthlm_answer(3.14)),
                                             (text.DEPTHVLM_PROMPT, text.DEPTHVLM_REPLY)])
def test_chat_tokens_layout_and_loss_mask(tok, question, answer):
  ids, mask = text.chat_tokens(tok, 6, question, answer)
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape
  assert ids.tolist() == tok.encode(_template(6, question, answer))
  assert (ids == tok.image_pad).sum() == 6
  img = np.flatnonzero(ids == tok.image_pad)
  assert ids[img[0] - 1] == tok.vision_start and ids[img[-1] + 1] == tok.vision_end
  # Loss only on the answer and the assistant's closing <|im_end|>, one contiguous span.
  span = np.flatnonzero(mask)
  assert np.array_equal(span, np.arange(span[0], span[-1] + 1))
  assert tok.decode(ids[mask]) == answer + "<|im_end|>"
  assert tok.decode(ids[:span[0]]).endswith("<|im_start|>assistant\n")
  assert tok.decode(ids[span[-1] + 1:]) == "\n"


def test_chat_tokens_generation_prompt(tok):
  ids, mask = text.chat_tokens(tok, 2, text.DEPTHLM_QUESTION)
  assert not mask.any()
  assert tok.decode(ids) == (SYSTEM + "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>"
                             + text.DEPTHLM_QUESTION + "<|im_end|>\n<|im_start|>assistant\n")
  # The system turn comes first, carries no loss, and can be left out on request.
  assert ids.tolist()[:len(tok.encode(SYSTEM))] == tok.encode(SYSTEM)
  bare, _ = text.chat_tokens(tok, 2, text.DEPTHLM_QUESTION, system=None)
  assert bare.tolist() == ids.tolist()[len(tok.encode(SYSTEM)):]


def test_pad_batch_labels_are_the_shifted_answer(tok):
  answers = [text.depthlm_answer(1.5), text.DEPTHVLM_REPLY]
  seqs = [text.chat_tokens(tok, n, text.DEPTHLM_QUESTION, a) for n, a in zip((4, 1), answers)]
  length = max(len(s[0]) for s in seqs) + 3
  batch = text.pad_batch(seqs, length, tok.pad_id)
  assert batch.input_ids.shape == batch.attention_mask.shape == batch.labels.shape == (2, length)
  for row, (ids, mask), answer in zip(range(2), seqs, answers):
    n = len(ids)
    np.testing.assert_array_equal(batch.input_ids[row, :n], ids)
    assert (batch.input_ids[row, n:] == tok.pad_id).all()
    np.testing.assert_array_equal(batch.attention_mask[row], np.arange(length) < n)
    labels = batch.labels[row]
    trained = labels != text.IGNORE_ID
    # labels[t] is the target of position t: the next input token, only on answer targets.
    np.testing.assert_array_equal(labels[trained], batch.input_ids[row, 1:][trained[:-1]])
    np.testing.assert_array_equal(trained[:n - 1], mask[1:])
    assert not trained[n - 1:].any()
    assert tok.decode(labels[trained]) == answer + "<|im_end|>"
    assert tok.decode(labels[trained], skip_special_tokens=True) == answer
  with pytest.raises(ValueError, match="more than the batch length"):
    text.pad_batch(seqs, length - 4, tok.pad_id)


def test_load_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    text.load_tokenizer(str(tmp_path))
