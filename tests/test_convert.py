"""Hugging Face import/export: exact round trips, transformers reloads, DepthVLM checkpoints."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from hf_utils import hf_inputs, hf_model, make_batch, state_dict_numpy, tiny, torch, transformers
from torch_dpt import TorchDPT, randomize
import depthvlm_jax as dvlm
from depthvlm_jax.convert import hf_config, safetensors_io
from depthvlm_jax.convert.safetensors_io import CheckpointError


def read_raw(path):
  """key -> (dtype string, raw bytes) of every tensor in a checkpoint directory."""
  out = {}
  for file in safetensors_io.shard_files(path):
    with safe_open(file, "np") as f:
      for key in f.keys():
        t = f.get_tensor(key)
        out[key] = (str(t.dtype), t.shape, t.tobytes())
  return out


def logits(model, cfg, ids, mask, pixels):
  """Logits at the real (non-padding) tokens."""
  with torch.no_grad():
    return model(**hf_inputs(cfg, ids, mask, pixels)).logits.numpy()[mask.astype(bool)]


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hf_round_trip_is_byte_identical_and_reloads(tmp_path, tie, dtype):
  cfg = tiny(depth_head=None, tie_word_embeddings=tie)
  hf = hf_model(cfg, seed=3).to(getattr(torch, dtype))
  hf.save_pretrained(tmp_path / "src")
  model, params = dvlm.load_pretrained(str(tmp_path / "src"))
  assert model.cfg.text == cfg.text and model.cfg.vision == cfg.vision and model.cfg.depth_head is None
  dvlm.save_pretrained(str(tmp_path / "out"), model, params, dtype=dtype)
  src, out = read_raw(tmp_path / "src"), read_raw(tmp_path / "out")
  assert sorted(src) == sorted(out)
  for key in src:
    assert src[key] == out[key], key
  # Both through from_pretrained: casting a live model to bf16 also rounds its rotary buffers.
  load = lambda d: transformers.Qwen3VLForConditionalGeneration.from_pretrained(
      tmp_path / d, attn_implementation="eager", dtype=torch.float32).eval()
  ids, mask, pixels = make_batch(cfg)
  np.testing.assert_array_equal(logits(load("out"), cfg, ids, mask, pixels), logits(load("src"), cfg, ids, mask, pixels))


@pytest.fixture(scope="module")
def depthvlm_checkpoint(tmp_path_factory):
  """A DepthVLM-layout checkpoint: Qwen3-VL tensors + release-shaped `depth_head.*`, sharded
  with an index, config carrying only `depth_head_type` (as the release writes it)."""
  cfg = tiny()
  hf = hf_model(cfg, seed=5)
  head = randomize(TorchDPT(cfg.text.hidden_size, cfg.depth_head), std=0.15, seed=5)
  tensors = dict(state_dict_numpy(hf))
  tensors.update({f"depth_head.{k}": v.detach().numpy() for k, v in head.state_dict().items()})
  path = tmp_path_factory.mktemp("depthvlm")
  safetensors_io.write_tensors(str(path), tensors.items(), max_shard_bytes=200_000)
  hf_cfg = hf_config.to_hf(cfg.replace(depth_head=None))
  hf_cfg.update(depth_head_type="dpt", depth_loss_weight=1.0)
  (path / "config.json").write_text(json.dumps(hf_cfg))
  return cfg, hf, head, str(path)


def test_depthvlm_checkpoint_keeps_depth_head_keys(depthvlm_checkpoint, tmp_path):
  cfg, _, _, path = depthvlm_checkpoint
  assert os.path.exists(os.path.join(path, safetensors_io.INDEX))
  assert len(safetensors_io.shard_files(path)) > 2
  model, params = dvlm.load_pretrained(path)
  got, want = model.cfg.depth_head, cfg.depth_head  # widths read off the tensors
  assert (got.kind, got.features, got.out_channels) == (want.kind, want.features, want.out_channels)
  dvlm.save_pretrained(str(tmp_path / "out"), model, params, max_shard_bytes=200_000)
  src, out = read_raw(path), read_raw(tmp_path / "out")
  assert sorted(src) == sorted(out)
  assert sum(k.startswith("depth_head.") for k in out) == len([k for k in src if k.startswith("depth_head.")]) > 40
  for key in src:
    assert src[key] == out[key], key
  exported = json.loads((tmp_path / "out" / "config.json").read_text())
  assert exported["depth_head_type"] == "dpt" and exported["architectures"] == ["Qwen3VLForConditionalGeneration"]


def test_depthvlm_prefill_depth_equals_torch_composition(depthvlm_checkpoint):
  """One prefill gives logits and a full-resolution depth map equal to the release's recipe:
  the DPT head on (DeepStack merger outputs before injection, final-normed LLM states)."""
  cfg, hf, head, path = depthvlm_checkpoint
  model, params = dvlm.load_pretrained(path)
  ids, mask, pixels = make_batch(cfg, seed=9)
  out = model.apply({"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(pixels), jnp.asarray(mask, jnp.int32))
  inputs = hf_inputs(cfg, ids, mask, pixels)
  grid = (pixels.shape[1] // 32, pixels.shape[2] // 32)
  n = grid[0] * grid[1]
  with torch.no_grad():
    vis = hf.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    ref_logits = hf(**inputs).logits.numpy()
    last = hf.model(**inputs).last_hidden_state
    ref = []
    for b in range(ids.shape[0]):
      feats = [f[b * n:(b + 1) * n][None] for f in vis.deepstack_features]
      feats.append(last[b][torch.tensor(ids[b] == cfg.image_token_id)][None])
      ref.append(head(feats, grid)[0].numpy())
  ref = np.stack(ref)
  assert out.depth.shape == pixels.shape[:3] and ref.std() > 0.05
  assert np.abs(np.asarray(out.depth) - ref).max() <= 1e-4
  valid = mask.astype(bool)
  assert np.abs(np.asarray(out.logits)[valid] - ref_logits[valid]).max() <= 1e-4


def test_transformers_loads_exported_depthvlm_directory(depthvlm_checkpoint, tmp_path):
  cfg, hf, _, path = depthvlm_checkpoint
  model, params = dvlm.load_pretrained(path)
  dvlm.save_pretrained(str(tmp_path / "out"), model, params)
  reloaded = transformers.Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
  ids, mask, pixels = make_batch(cfg)
  np.testing.assert_array_equal(logits(reloaded, cfg, ids, mask, pixels), logits(hf, cfg, ids, mask, pixels))


def _broken_copy(path, dst, tensors=None, config=None):
  """A copy of checkpoint `path` at `dst` with replaced tensors and/or config.json text."""
  dst.mkdir(exist_ok=True)
  for f in dst.iterdir():
    f.unlink()
  (dst / "config.json").write_text(config if config is not None else open(os.path.join(path, "config.json")).read())
  save_file(tensors or dict(safetensors_io.read_tensors(path)), str(dst / safetensors_io.SINGLE))  # unchecked
  return str(dst)


def test_load_errors_name_the_file_and_the_problem(depthvlm_checkpoint, tmp_path):
  _, _, _, path = depthvlm_checkpoint
  with pytest.raises(FileNotFoundError, match="config.json"):
    dvlm.load_pretrained(str(tmp_path))
  broken = tmp_path / "broken"
  fresh = lambda: dict(safetensors_io.read_tensors(path))

  def refused(match, **kw):
    with pytest.raises(CheckpointError, match=match):
      dvlm.load_pretrained(_broken_copy(path, broken, **kw))

  tensors = fresh()
  del tensors["model.language_model.layers.2.mlp.up_proj.weight"]
  refused(r"broken: .*layers \[2\] are missing", tensors=tensors)
  tensors = fresh()
  tensors["model.visual.pos_embed.weight"] = tensors["model.visual.pos_embed.weight"][:10]
  refused("broken: .*visual/pos_embed", tensors=tensors)
  tensors = fresh()
  tensors["model.visual.unknown.weight"] = np.zeros(3, np.float32)
  refused("broken: .*model.visual.unknown.weight", tensors=tensors)
  tensors = fresh()  # one layer of a stack with another shape: named, not a bare np.stack error
  tensors["model.language_model.layers.1.mlp.down_proj.weight"] = tensors[
      "model.language_model.layers.1.mlp.down_proj.weight"][:, :-1]
  refused(r"model.language_model.layers.1.mlp.down_proj.weight has shape \[\d+, \d+\] where the other", tensors=tensors)
  tensors = fresh()
  tensors["model.language_model.layers.0.self_attn.q_proj.weight"][3, 1] = np.nan
  refused(r"model.safetensors: tensor 'model.language_model.layers.0.self_attn.q_proj.weight' has 1 NaN/inf",
          tensors=tensors)
  refused(r"broken/config.json: not valid JSON", config='{"text_config": {')
  refused(r"broken/config.json: not a Qwen3-VL config \(model_type 'llama'",
          config=json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2}))
  text = json.load(open(os.path.join(path, "config.json")))
  del text["text_config"]["hidden_size"]
  refused(r"broken/config.json: not a usable Qwen3-VL config: missing field 'hidden_size'", config=json.dumps(text))
  _broken_copy(path, broken)
  weights = broken / safetensors_io.SINGLE
  weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
  with pytest.raises(CheckpointError, match=r"broken/model.safetensors: .*(truncated or corrupt)"):
    dvlm.load_pretrained(str(broken))


def test_nan_weights_are_not_exported(depthvlm_checkpoint, tmp_path):
  _, _, _, path = depthvlm_checkpoint
  model, params = dvlm.load_pretrained(path)
  params["depth_head"]["norm"]["scale"] = params["depth_head"]["norm"]["scale"].at[0].set(jnp.inf)
  with pytest.raises(CheckpointError, match="depth_head.norm.weight' has 1 NaN/inf"):
    dvlm.save_pretrained(str(tmp_path / "out"), model, params)
  assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())  # no partial output left


def test_mlp_head_checkpoint_round_trips(tmp_path):
  cfg = tiny(depth_head=dvlm.DepthHeadConfig(kind="mlp", mlp_hidden=48))
  model, params = dvlm.DepthVLM(cfg), dvlm.init_params(cfg, seed=4)
  dvlm.save_pretrained(str(tmp_path / "a"), model, params)
  assert "depth_head.mlp.2.weight" in read_raw(tmp_path / "a")
  loaded, reread = dvlm.load_pretrained(str(tmp_path / "a"))
  assert loaded.cfg.depth_head.kind == "mlp" and loaded.cfg.depth_head.mlp_hidden == 48
  dvlm.save_pretrained(str(tmp_path / "b"), loaded, reread)
  assert read_raw(tmp_path / "a") == read_raw(tmp_path / "b")
