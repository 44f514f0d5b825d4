"""depthvlm-data: build unified metric-depth records (ArrayRecord shards).

  depthvlm-data ingest --source=depthvlm_bench --input=examples.jsonl --out=data/scannetpp \\
      --root=rgb --depth_root=depth --dataset=scannetpp
  depthvlm-data ingest --source=depthlm --input=ibims1_val.jsonl --out=data/ibims --depth_type=z
  depthvlm-data ingest --source=kitti --input=eigen_test_files.txt --root=/kitti/raw \
      --param=gt_root=/kitti/data_depth_annotated --out=data/kitti
  depthvlm-data synth --num=2000 --kind=mixed --out=data/synth --num_shards=4
  depthvlm-data show --input='data/synth/*.array_record'

Sources: see depthvlm_jax.data.ingest.run.CONVERTERS. A bad record stops the ingest with a
message naming the file, the record and the field; nothing is left half-written. Shards of an
earlier run of the same dataset and prefix are replaced; another dataset's are kept unless
--overwrite. `show` decodes and validates every record and fails if any is bad.
"""

from __future__ import annotations

import collections
import time

from absl import app, flags

from depthvlm_jax.cli import runner
from depthvlm_jax.data import shards
from depthvlm_jax.data.ingest import run as ingest_run
from depthvlm_jax.data.records import RecordError

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "ingest: converter name (depthvlm_bench, depthlm, nyuv2, kitti, diode, eth3d).")
flags.DEFINE_string("input", None, "ingest: the source's JSONL/file/dir; show: shard glob.")
flags.DEFINE_string("out", None, "Output directory for the shards.")
flags.DEFINE_string("prefix", None, "Shard file prefix (default: from the input / 'synthetic').")
flags.DEFINE_integer("num_shards", 1, "Number of ArrayRecord shards to write.")
flags.DEFINE_string("root", None, "ingest: image root (default: the input's folder).")
flags.DEFINE_string("depth_root", None, "ingest (depthvlm_bench): depth PNG root.")
flags.DEFINE_string("dataset", None, "ingest: dataset name (sets domain and depth range when known).")
flags.DEFINE_string("domain", None, "ingest: indoor | outdoor | mixed.")
flags.DEFINE_enum("depth_type", None, ["z", "ray"], "ingest (depthlm): what the JSONL depths are.")
flags.DEFINE_multi_string("param", [], "ingest: converter-specific key=value (e.g. gt_root=/kitti/gt, "
                          "indices=splits.mat, depth_key=rawDepths, strict=true).")
flags.DEFINE_string("split", "test", "Split name stored in the records.")
flags.DEFINE_integer("num", 1000, "synth: number of scenes.")
flags.DEFINE_enum("kind", "mixed", ["indoor", "outdoor", "mixed"], "synth: scene kind.")
flags.DEFINE_integer("seed", 0, "synth: seed of the first scene (scene i uses seed + i).")
flags.DEFINE_integer("workers", 0, "synth: rendering processes (0: one per CPU core).")
flags.DEFINE_bool("overwrite", False, "ingest/synth: replace shards of the same prefix that hold another dataset.")


class _Progress:
  """Wraps an iterator of records, printing count, rate and ETA."""

  def __init__(self, it, total=None, every=100):
    self.it, self.total, self.every, self.start = it, total, every, time.time()

  def __iter__(self):
    for n, rec in enumerate(self.it, 1):
      if n % self.every == 0 or n == self.total:
        rate = n / max(time.time() - self.start, 1e-9)
        eta = f", ETA {(self.total - n) / rate:.0f} s" if self.total else ""
        print(f"  {n}{'/' + str(self.total) if self.total else ''} records, {rate:.1f}/s{eta}", flush=True)
      yield rec


def _ingest():
  params = {k: getattr(FLAGS, k) for k in ("root", "depth_root", "dataset", "domain", "depth_type")
            if getattr(FLAGS, k) is not None}
  for item in FLAGS.param:
    key, sep, value = item.partition("=")
    if not sep:
      raise app.UsageError(f"--param={item!r} is not key=value")
    params[key] = {"true": True, "false": False}.get(value.lower(), value)
  if FLAGS.source == "depthlm" and FLAGS.depth_type is None:
    raise app.UsageError("--depth_type=z|ray is required: DepthLM's JSONL does not say which its depths are")
  if FLAGS.source != "depthlm":
    params.pop("depth_type", None)
  paths, count = ingest_run.ingest(FLAGS.source, FLAGS.input, FLAGS.out, prefix=FLAGS.prefix,
                                   num_shards=FLAGS.num_shards, split=FLAGS.split, overwrite=FLAGS.overwrite,
                                   **params)
  return paths, count


def _synth():
  from depthvlm_jax.data import synthetic
  cfg = synthetic.SceneConfig(kind=FLAGS.kind)
  records = _Progress(synthetic.generate(FLAGS.num, cfg, seed0=FLAGS.seed, split=FLAGS.split, workers=FLAGS.workers),
                      FLAGS.num)
  paths = shards.write_shards(records, FLAGS.out, FLAGS.prefix or f"synthetic_{FLAGS.kind}",
                              num_shards=FLAGS.num_shards, overwrite=FLAGS.overwrite)
  return paths, FLAGS.num


def _show():
  counts, bad, first = collections.Counter(), [], None
  for raw in shards.iter_raw(FLAGS.input):
    try:
      rec = raw.decode()
      try:
        rec.decode_image()
      except RecordError as e:
        raise RecordError(f"{raw.where} [{rec.key}]", e.field, e.problem) from e
    except RecordError as e:
      bad.append(str(e))
      continue
    counts[(rec.dataset, rec.domain, rec.depth_source_type, rec.split)] += 1
    first = first or rec
  for (dataset, domain, dtype, split), n in sorted(counts.items()):
    print(f"{dataset:20s} {domain:8s} depth:{dtype:3s} split:{split:6s} {n} records")
  if first is not None:
    print(f"first: {first.key} image {first.image_size} fx {first.intrinsics[0]:.1f} "
          f"dense={'yes' if first.depth is not None else 'no'} points={0 if first.points is None else len(first.points)}")
  for message in bad[:10]:
    print(f"bad: {message}")
  if bad:
    raise RecordError(FLAGS.input, "records", f"{len(bad)} of {len(bad) + sum(counts.values())} records are bad "
                      f"(first: {bad[0]})")


def main(argv):
  commands = {"ingest": _ingest, "synth": _synth, "show": _show}
  if len(argv) != 2 or argv[1] not in commands:
    raise app.UsageError(f"usage: depthvlm-data {{{'|'.join(commands)}}} --flags (see --help)")
  if argv[1] != "show" and not FLAGS.out:
    raise app.UsageError("--out is required")
  if argv[1] == "ingest" and not (FLAGS.source and FLAGS.input):
    raise app.UsageError("ingest needs --source and --input")
  start = time.time()
  result = commands[argv[1]]()
  if result:
    paths, count = result
    print(f"wrote {count} records to {len(paths)} shard(s) in {FLAGS.out} ({time.time() - start:.1f} s)")


def run():
  runner.run(main)


if __name__ == "__main__":
  run()
