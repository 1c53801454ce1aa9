"""Embedding a large corpus with Ray Data: read JSONL/Parquet, embed with a pool of actors (one
encoder each), write Parquet shards; then :func:`~tp_rag.distributed.shards.build_index`.

>>> import ray
>>> ray.init()                       # or ray.init(address="ray://head:10001") for a cluster
>>> result = embed_corpus("corpus.jsonl", "shards/", preset_config("gemma-3-270m"), num_actors=4)
>>> index = build_index("shards/", "my-index")

The driver writes the shards as the embedded rows stream back (order preserved), so the output
folder lives on the driver's machine and need not be shared storage. Rerunning the same command
after an interruption skips every document already in a complete shard.
"""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np

from tp_rag.config import EncoderConfig
from tp_rag.corpus import join_title
from tp_rag.distributed.sources import corpus_paths, is_parquet
from tp_rag.distributed.shards import (
    ShardWriter,
    next_run,
    row_to_document,
    shard_table,
    start_folder,
    write_json,
)

PathLike = Union[str, Path]
Kind = Literal["text", "query", "document"]


@dataclass
class EmbedCorpusResult:
    output_dir: str
    documents: int        # in the folder now
    embedded: int         # by this run
    skipped: int          # already in the folder's shards
    shards_written: int
    seconds: float        # wall time of the job, actor start-up and model loads included
    num_actors: int
    # From the first encode call's start to the last one's end (model loading excluded).
    embed_seconds: Optional[float] = None

    @property
    def embed_docs_per_second(self) -> Optional[float]:
        return self.embedded / self.embed_seconds if self.embed_seconds else None

    @property
    def docs_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        rate = self.embed_docs_per_second
        return {**asdict(self), "docs_per_second": round(self.docs_per_second, 2),
                "embed_docs_per_second": round(rate, 2) if rate is not None else None}


def embed_corpus(
    corpus: Union[PathLike, Sequence[PathLike]],
    output_dir: PathLike,
    config: EncoderConfig,
    *,
    kind: Kind = "document",
    num_actors: int = 1,
    num_cpus_per_actor: float = 1.0,
    num_gpus_per_actor: float = 0.0,
    batch_size: int = 64,
    shard_size: int = 4096,
    text_field: str = "text",
    id_field: Optional[str] = None,
    title_field: Optional[str] = "title",
    overwrite: bool = False,
    address: Optional[str] = None,
    show_progress: bool = False,
) -> EmbedCorpusResult:
    """Embed every document of ``corpus`` (JSONL or Parquet files, or a folder of them) into
    Parquet shards under ``output_dir``.

    Each of ``num_actors`` Ray actors loads one encoder (``config``; set ``device="cuda"`` and
    ``num_gpus_per_actor=1`` for GPUs) and embeds ``batch_size`` documents per call, as
    :meth:`Encoder.encode` with ``kind`` would (documents: ``encode_documents`` on
    ``"{title}. {text}"``). Uses the running Ray instance, else ``ray.init(address=address)``
    (``None``: a new local instance).
    """
    import ray
    import ray.data

    paths = corpus_paths(corpus)
    output_dir = Path(output_dir)
    manifest, done = start_folder(output_dir, config, paths, kind, text_field, id_field,
                                  title_field, overwrite)
    done = frozenset(done)

    _ensure_ray(address)
    started = time.perf_counter()
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True  # shards in corpus order
    context.enable_progress_bars = bool(show_progress)
    fields = dict(text_field=text_field, id_field=id_field, title_field=title_field)
    ds = _read(paths, fields)
    ds = ds.map_batches(
        _EmbedActor,
        fn_constructor_kwargs={"config": config.model_dump(mode="json"), "kind": kind,
                               "skip": done, "threads": max(1, int(num_cpus_per_actor))},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=num_cpus_per_actor,
        num_gpus=num_gpus_per_actor,
    )
    writer = ShardWriter(output_dir, next_run(output_dir), shard_size)
    span = [float("inf"), float("-inf")]  # encode calls' wall-clock start and end, all actors
    try:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if table.num_rows:
                span[0] = min(span[0], pc_min(table, "_encode_start"))
                span[1] = max(span[1], pc_max(table, "_encode_end"))
            writer.add(table)
            if manifest.get("dim") is None and writer.dim is not None:
                manifest["dim"] = writer.dim
                write_json(output_dir / "embeddings.json", manifest)
        writer.close()
    finally:
        del ds  # let Ray Data release the actor pool now, not at garbage collection
        gc.collect()
        context.execution_options.preserve_order, context.enable_progress_bars = saved
    seconds = time.perf_counter() - started
    embed_seconds = span[1] - span[0] if span[1] > span[0] else None

    total = len(done) + writer.rows_written
    manifest.update(complete=True, count=total)
    write_json(output_dir / "embeddings.json", manifest)
    return EmbedCorpusResult(str(output_dir), total, writer.rows_written, len(done), writer.seq,
                             round(seconds, 3), num_actors,
                             round(embed_seconds, 3) if embed_seconds is not None else None)


# -- reading ----------------------------------------------------------------------------------------
def _read(paths: list[Path], fields: dict):
    import ray.data

    strs = [str(p) for p in paths]
    # Reading and parsing are light next to the model: they hold no CPU slot, so a pool of
    # actors that takes every CPU cannot starve them.
    if is_parquet(paths):
        ds = ray.data.read_parquet(strs, num_cpus=0)
        return ds.map_batches(_parse_records, fn_kwargs=fields, batch_format="pyarrow", num_cpus=0)
    ds = ray.data.read_text(strs, num_cpus=0)
    return ds.map_batches(_parse_lines, fn_kwargs=fields, batch_format="numpy", num_cpus=0)


def _columns(docs) -> dict:
    return {
        "id": np.array([d.id for d in docs], dtype=object),
        "text": np.array([d.text for d in docs], dtype=object),
        "title": np.array([d.title or "" for d in docs], dtype=object),
        "metadata": np.array([json.dumps(d.metadata, ensure_ascii=False) for d in docs], dtype=object),
    }


def _parse_lines(batch: dict, **fields) -> dict:
    docs = []
    for line in batch["text"]:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"invalid JSON line ({err.msg}): {line[:80]!r}") from None
        if not isinstance(row, dict):
            raise ValueError(f"expected a JSON object per line, got: {line[:80]!r}")
        docs.append(row_to_document(row, **fields))
    return _columns(docs)


def _parse_records(table, **fields) -> dict:
    return _columns([row_to_document(row, **fields) for row in table.to_pylist()])


# -- embedding --------------------------------------------------------------------------------------
class _EmbedActor:
    """One encoder per actor; called with batches of parsed documents."""

    def __init__(self, config: dict, kind: str, skip: frozenset, threads: int):
        import torch
        from transformers.utils import logging as hf_logging

        from tp_rag.encoder import Encoder

        hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        self.encoder = Encoder(EncoderConfig(**config))
        self.kind, self.skip = kind, skip

    def __call__(self, batch: dict):
        keep = [i for i, doc_id in enumerate(batch["id"]) if doc_id not in self.skip]
        cols = {k: batch[k][keep] for k in ("id", "text", "title", "metadata")}
        texts = [join_title(title or None, text) for title, text in zip(cols["title"], cols["text"])]
        began = time.time()
        if texts:
            vectors = self.encoder.encode(texts, kind=self.kind, show_progress=False)
        else:
            vectors = np.zeros((0, self.encoder.dim), dtype=np.float32)
        table = shard_table(cols["id"], cols["text"], cols["title"], cols["metadata"], vectors)
        # Timing columns for the driver's throughput figure; shards keep only SCHEMA_FIELDS.
        n = table.num_rows
        table = table.append_column("_encode_start", _floats([began] * n))
        return table.append_column("_encode_end", _floats([time.time()] * n))


def _floats(values):
    import pyarrow as pa

    return pa.array(values, type=pa.float64())


def pc_min(table, column: str) -> float:
    import pyarrow.compute as pc

    return float(pc.min(table.column(column)).as_py())


def pc_max(table, column: str) -> float:
    import pyarrow.compute as pc

    return float(pc.max(table.column(column)).as_py())


# -- helpers ----------------------------------------------------------------------------------------
def _ensure_ray(address: Optional[str]) -> None:
    import ray

    if ray.is_initialized():
        return
    if address is None:
        # A private local instance: no usage reporting, no dashboard, loopback only.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
    else:
        ray.init(address=address)
