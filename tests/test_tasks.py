"""Task objects: DepthLM's answer parsing, and each task's example through the pipeline (the
exact chat layout with the system turn, loss only on the answer)."""

import numpy as np
import pytest

from depthvlm_jax import tasks
from depthvlm_jax.data import pipeline, text, transforms
from depthvlm_jax.tasks.depthlm import parse_answer


@pytest.mark.parametrize("out,expected", [
    (text.depthlm_answer(2.345), 2.35),  # "{:.2f}" of the float 2.345
    (text.depthlm_answer(12.0), 12.0),
    ("<think> about 3 meters </think>\n\n<answer> 4.75 </answer>", 4.75),
    ("<think> 7 or 8 </think> <answer> 2.5 m, maybe 3 </answer> then 9", 2.5),  # the answer tag wins
    ("<answer> none </answer> it is 6.5", 6.5),  # no number inside: the last number anywhere
    ("4", 4.0),
    ("The depth is 2.5 m, not 3.75.", 3.75),
    ("<answer> .5 </answer>", 0.5),
    ("12. meters", 12.0),
    ("1.5e1", 15.0),
    ("-1.2", -1.2),
    ("no idea", None),
    ("", None),
    ("<answer> </answer>", None),
])
def test_parse_answer(out, expected):
  got = parse_answer(out)
  assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("name", ["depthvlm", "depthlm"])
def test_task_examples_have_the_release_chat_layout(name):
  task = tasks.get(name)
  cfg = pipeline.PipelineConfig(task=task, sources=(pipeline.Source(synthetic=2, synthetic_seed=3),),
                                image_hw=(64, 96), batch_size=2, canonical_fx=100.0, shuffle=False)
  batch = next(iter(pipeline.build(cfg)))
  tok = text.load_tokenizer()
  for b in range(2):
    n = int(batch["attention_mask"][b].sum())
    ids = batch["input_ids"][b, :n].tolist()
    labels = batch["labels"][b]
    answer = tok.decode(labels[labels != text.IGNORE_ID])
    question = task.prompt if name == "depthvlm" else task.question
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                + "<|image_pad|>" * 6 + "<|vision_end|>" + question + "<|im_end|>\n<|im_start|>assistant\n"
                + answer.removesuffix("<|im_end|>") + "<|im_end|>\n")
    assert ids == tok.encode(expected)
    assert answer == (task.reply if name == "depthvlm" else text.depthlm_answer(float(batch["query"][b, 2]))) + "<|im_end|>"


def test_unknown_task_is_refused():
  with pytest.raises(ValueError, match="unknown task 'dense'"):
    tasks.get("dense")


def test_three_d_questions_mark_the_points_and_answer_in_metres():
  from depthvlm_jax.tasks import questions
  intr = (100.0, 50.0, 20.0, 10.0)
  xyz = np.array([[20, 10, 2.0], [30, 30, 4.0]])  # on the axis at 2 m; (0.4, 1.6, 4) m
  np.testing.assert_allclose(questions.camera_points(xyz, intr), [[0, 0, 2], [0.4, 1.6, 4]])
  rgb = np.zeros((40, 48, 3), np.uint8)
  marked, question, value = questions.ask(questions.get("two_points"), rgb, xyz, intr)
  assert value == pytest.approx(np.sqrt(0.4 ** 2 + 1.6 ** 2 + 2 ** 2)) and "blue arrow" in question
  for colour, (x, y) in (((255, 0, 0), (20, 10)), ((0, 0, 255), (30, 30))):
    got = sorted(map(tuple, np.argwhere(np.all(marked == colour, axis=-1))[:, ::-1]))
    assert got == sorted(transforms.arrow_pixels(x, y))
  _, _, z = questions.ask(questions.get("principal_axis"), rgb, xyz[1:], intr)
  assert z == 4.0
  task = tasks.get("depthlm", questions=("depth", "two_points"))
  assert parse_answer(questions.get("two_points").answer(3.456)) == 3.46
  assert {q for q, _ in task.texts()} == {text.DEPTHLM_QUESTION, questions.get("two_points").question}
