"""TFDS builder `depthvlm_bench`: DepthRecords as a TFDS dataset in ArrayRecord files.

Nothing is downloaded: each config turns a source's seed JSONL files (plus their images and
depth maps), found in the manual dir, into records with the project's own converters
(`ingest.run.CONVERTERS`), so TFDS holds exactly what `ingest` would write.

Works without TensorFlow: TFDS serialises examples with its own copy of the tf.train.Example
protos, writes ArrayRecord (`group_size:1`), and reads it back through `as_data_source` /
`tfds.data_source` (random access, usable as a grain source). What needs TensorFlow:
`as_dataset` / `tfds.load` (tf.data) and the `tfds build` command (its module imports TF), so
build with `prepare` below.

Each example is one feature `record`, the `DepthRecord.to_bytes` msgpack, plus `key`,
`dataset` and `scene_id` for browsing. A FeaturesDict of the record's fields would duplicate
the schema, could not say "absent" for the optional depth/valid/points, and would store the
depth map (two unknown dimensions) as opaque bytes anyway; the msgpack round-trips exactly,
with the same bytes as the project's own shards.

  builder = prepare("scannetpp", data_dir, manual_dir)
  records = load_records(builder, "test")  # random access, a grain MapDataset
  source = grain_source(builder, "test")   # grain reading TFDS's files itself
  rec = decode_example(builder.info.features, source[0])
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Union

import grain
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from depthvlm_jax.data.ingest import DATASETS
from depthvlm_jax.data.ingest.run import CONVERTERS
from depthvlm_jax.data.records import DepthRecord

# DepthLM stores Euclidean ray length for most sources but z for these (see REFERENCE.md);
# sources it does not document (iBims among them) need a config that says which.
DEPTHLM_DEPTH_TYPES = {
    "nyuv2": "ray", "sunrgbd": "ray", "eth3d": "ray", "matterport": "ray", "argoverse": "ray",
    "waymo": "ray", "nuscenes": "z", "ddad": "z",
}
# Converter parameters that name folders: they are given relative to the manual dir.
PATH_PARAMS = ("root", "depth_root")


@dataclasses.dataclass(eq=False)
class DepthvlmBenchConfig(tfds.core.BuilderConfig):
  """One source: its converter (a CONVERTERS key), the records' dataset name, domain and depth
  range (default: the benchmark's values; a JSONL row's own fields still come first), the
  manual-dir JSONL files (a glob) of each split, and the converter's other parameters (`root`,
  `depth_root` relative to the manual dir). A config of one's own needs a name of its own:
  the name is the folder its files go to."""

  source: str = "depthvlm_bench"
  dataset: str = ""
  domain: Optional[str] = None
  depth_range: Optional[tuple[float, float]] = None
  splits: dict[str, str] = dataclasses.field(default_factory=lambda: {"test": "*.jsonl"})
  params: dict[str, object] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.dataset = self.dataset or self.name
    if self.source not in CONVERTERS:
      raise ValueError(f"config {self.name!r}: unknown source {self.source!r}; known: {sorted(CONVERTERS)}")
    known = DATASETS.get(self.dataset, (None, None))
    self.domain = self.domain or known[0]
    self.depth_range = self.depth_range or known[1]
    self.description = self.description or (
        f"{self.dataset} in the {self.source} format (domain {self.domain}, depth range {self.depth_range} m)")

  def converter_params(self, manual_dir: Path, split: str) -> dict:
    params = {k: manual_dir / v if k in PATH_PARAMS else v for k, v in self.params.items()}
    return dict(params, dataset=self.dataset, domain=self.domain, depth_range=self.depth_range, split=split)


def _configs() -> list[DepthvlmBenchConfig]:
  bench = [DepthvlmBenchConfig(name=n, params={"root": "rgb", "depth_root": "depth"}) for n in DATASETS]
  depthlm = [DepthvlmBenchConfig(name=f"depthlm_{n}", dataset=n, source="depthlm", params={"depth_type": t})
             for n, t in DEPTHLM_DEPTH_TYPES.items()]
  return bench + depthlm


class DepthvlmBench(tfds.core.GeneratorBasedBuilder):
  """DepthVLM-Bench and DepthLM sources as DepthRecords, one config a source."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "DepthRecord msgpack per example."}
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Give as manual_dir the source's folder: its JSONL files (the config's `splits` globs,
  default `*.jsonl`, all into split "test") and the files they name. DepthVLM-Bench configs
  (`scannetpp`, ...) read images from `rgb/` and depth PNGs from `depth/`; DepthLM configs
  (`depthlm_nyuv2`, ...) read image paths relative to the JSONL's folder."""

  # TFDS finds this itself through `importlib_resources`, which it uses on every Python but
  # declares only for Python < 3.9 (tensorflow/datasets#11212).
  code_path = epath.Path(__file__)

  def __init__(self, *, file_format=None, **kwargs):
    # ArrayRecord by default: random access, and the format grain reads.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo itself, not dataset_info_from_configs: that reads metadata files (README,
    # CITATIONS) from this module's folder, which the project does not keep.
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict({
            "record": tfds.features.Scalar(np.object_, doc="DepthRecord.to_bytes (msgpack)"),
            "key": tfds.features.Text(),
            "dataset": tfds.features.Text(),
            "scene_id": tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    manual_dir = Path(os.fspath(dl_manager.manual_dir))
    cfg = self.builder_config
    gens = {}
    for split, pattern in cfg.splits.items():
      files = sorted(manual_dir.glob(pattern))
      if not files:
        raise FileNotFoundError(f"config {cfg.name!r}, split {split!r}: no {pattern} under {manual_dir}")
      gens[split] = self._generate_examples(files, cfg.converter_params(manual_dir, split))
    return gens

  def _generate_examples(self, files, params):
    convert = CONVERTERS[self.builder_config.source]
    for path in files:
      for rec in convert(path, **params):
        yield rec.key, {"record": rec.to_bytes(), "key": rec.key, "dataset": rec.dataset,
                        "scene_id": rec.scene_id}


def prepare(config: Union[str, DepthvlmBenchConfig], data_dir, manual_dir, **builder_kwargs) -> DepthvlmBench:
  """Builds (once; later calls reuse the files) and returns the builder of one config."""
  builder = DepthvlmBench(config=config, data_dir=os.fspath(data_dir), **builder_kwargs)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def _record(example: dict) -> DepthRecord:
  return DepthRecord.from_bytes(example["record"])


def load_records(builder: tfds.core.DatasetBuilder, split: str = "test") -> grain.MapDataset:
  """The split's DepthRecords through TFDS's random-access data source, as a grain MapDataset
  (len, indexing, slicing, and the start of a grain pipeline)."""
  return grain.MapDataset.source(builder.as_data_source(split)).map(_record)


def grain_source(builder: tfds.core.DatasetBuilder, split: str = "test") -> grain.sources.ArrayRecordDataSource:
  """grain's ArrayRecord source over the split's files, in TFDS's order. Its items are
  serialised tf.train.Example protos: decode them with `decode_example`."""
  return grain.sources.ArrayRecordDataSource([os.fspath(p) for p in builder.info.splits[split].filepaths])


def decode_example(features: tfds.features.FeaturesDict, data: bytes) -> DepthRecord:
  """One serialised example of the files -> DepthRecord. features: `builder.info.features`, or
  without this class, `tfds.builder_from_directory(folder).info.features`."""
  return _record(features.deserialize_example_np(data))
