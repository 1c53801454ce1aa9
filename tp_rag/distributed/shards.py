"""Embedding shards: Parquet files of ``id, text, title, metadata, embedding`` in one folder, and
the FAISS index built from them. Needs pyarrow, not Ray: a folder written on a cluster can be
indexed anywhere.

Layout of a shard folder::

    embeddings.json          # encoder settings, dim, kind, corpus, fields (checked on rerun)
    shard-r000-00000.parquet # run 0's first shard; names sort in the order rows were written
    shard-r000-00001.parquet
    shard-r001-00000.parquet # a resumed run's shards come after

A shard appears only complete: it is written to ``*.tmp`` and renamed, so an interrupted run
leaves no half shard that a rerun would trust.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from tp_rag.config import EncoderConfig
from tp_rag.corpus import Document, row_to_document  # noqa: F401  (re-exported)
from tp_rag.index.compat import differences

PathLike = Union[str, Path]
MANIFEST = "embeddings.json"
FORMAT = 1
_SHARD = re.compile(r"^shard-r(\d{3,})-(\d{5,})\.parquet$")


class ShardFolderError(ValueError):
    """The shard folder does not fit this job (other settings, other corpus) or is damaged."""


@dataclass
class ShardInfo:
    path: Path
    run: int
    seq: int


def shard_manifest(folder: PathLike) -> Optional[dict]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ShardFolderError(f"{path} is not valid JSON ({err.msg})") from None


def prepare_folder(folder: PathLike, manifest: dict, *, overwrite: bool = False) -> dict:
    """Create the folder or check that an existing one was made with the same settings.
    Returns the manifest in force (the existing one on a rerun)."""
    folder = Path(folder)
    existing = shard_manifest(folder)
    if existing is not None and overwrite:
        shutil.rmtree(folder)
        existing = None
    if existing is None:
        if folder.exists() and any(folder.iterdir()):
            raise ShardFolderError(f"{folder} exists and is not a tp-rag shard folder; pick an "
                                   "empty or new folder")
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / MANIFEST, manifest)
        return manifest
    problems = differences(EncoderConfig(**existing["encoder"]), EncoderConfig(**manifest["encoder"]))
    for key in ("kind", "text_field", "id_field", "title_field"):
        if existing.get(key) != manifest.get(key):
            problems.append(f"{key}: folder {existing.get(key)!r}, now {manifest.get(key)!r}")
    if problems:
        raise ShardFolderError(
            f"{folder} holds embeddings made differently ({'; '.join(problems)}); use a new "
            "folder, or overwrite=True (--overwrite) to start again")
    return existing


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def list_shards(folder: PathLike) -> list[ShardInfo]:
    out = []
    for path in Path(folder).glob("shard-r*.parquet"):
        match = _SHARD.match(path.name)
        if match:
            out.append(ShardInfo(path, int(match.group(1)), int(match.group(2))))
    return sorted(out, key=lambda s: (s.run, s.seq))


def next_run(folder: PathLike) -> int:
    shards = list_shards(folder)
    return shards[-1].run + 1 if shards else 0


def start_folder(output_dir: Path, config: EncoderConfig, paths: Sequence, kind: str,
                 text_field: str, id_field: Optional[str], title_field: Optional[str],
                 overwrite: bool) -> tuple[dict, set]:
    """Open (or create) a shard folder for a run: its manifest, marked incomplete until the run
    ends, and the ids already written by earlier runs."""
    manifest = prepare_folder(output_dir, {
        "format": 1, "encoder": config.model_dump(mode="json"), "dim": None, "kind": kind,
        "corpus": [str(p) for p in paths], "text_field": text_field, "id_field": id_field,
        "title_field": title_field, "complete": False,
    }, overwrite=overwrite)
    done = written_ids(output_dir)
    manifest["complete"] = False
    write_json(output_dir / "embeddings.json", manifest)
    return manifest, done


def written_ids(folder: PathLike) -> set:
    """Ids in the complete shards (reads only the ``id`` column)."""
    import pyarrow.parquet as pq

    ids: set = set()
    for shard in list_shards(folder):
        ids.update(pq.read_table(shard.path, columns=["id"]).column("id").to_pylist())
    return ids


SCHEMA_FIELDS = ("id", "text", "title", "metadata", "embedding")


def shard_table(ids, texts, titles, metadata, vectors: np.ndarray):
    """The Arrow table of one batch: strings, and ``embedding`` as fixed-size float32 lists."""
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    return pa.table({
        "id": pa.array([str(x) for x in ids], type=pa.string()),
        "text": pa.array(list(texts), type=pa.string()),
        "title": pa.array([t if t else None for t in titles], type=pa.string()),
        "metadata": pa.array(list(metadata), type=pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1), type=pa.float32()), dim),
    })


def table_vectors(table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)


class ShardWriter:
    """Collects embedded rows (Arrow tables as :func:`shard_table` makes) and writes a shard
    every ``shard_size`` rows, and the rest at :meth:`close`."""

    def __init__(self, folder: PathLike, run: int, shard_size: int = 4096):
        self.folder, self.run, self.shard_size = Path(folder), run, shard_size
        self.seq = 0
        self.rows_written = 0
        self.dim: Optional[int] = None
        self._tables: list = []
        self._buffered = 0

    def add(self, table) -> None:
        if table.num_rows == 0:
            return
        dim = table.schema.field("embedding").type.list_size
        if self.dim is None:
            self.dim = dim
        elif dim != self.dim:
            raise ShardFolderError(f"got {dim}-dimensional vectors after {self.dim}-dimensional ones")
        self._tables.append(table.select(list(SCHEMA_FIELDS)))
        self._buffered += table.num_rows
        while self._buffered >= self.shard_size:
            self._flush(self.shard_size)

    def close(self) -> None:
        if self._buffered:
            self._flush(self._buffered)

    def _flush(self, n: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.concat_tables(self._tables)
        path = self.folder / f"shard-r{self.run:03d}-{self.seq:05d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table.slice(0, n), tmp)
        os.replace(tmp, path)
        rest = table.slice(n)
        self._tables = [rest] if rest.num_rows else []
        self._buffered = rest.num_rows
        self.seq += 1
        self.rows_written += n


def read_shards(folder: PathLike) -> Iterator[tuple[np.ndarray, list[Document]]]:
    """``(vectors, documents)`` per shard, in written order."""
    import pyarrow.parquet as pq

    for shard in list_shards(folder):
        table = pq.read_table(shard.path)
        vectors = table_vectors(table)
        docs = [Document(id=i, text=t, metadata=json.loads(m), title=title)
                for i, t, title, m in zip(*(table.column(c).to_pylist()
                                            for c in ("id", "text", "title", "metadata")))]
        yield vectors, docs


def load_embeddings(folder: PathLike) -> tuple[list[str], np.ndarray]:
    """All ids and vectors of a shard folder, in written order."""
    ids: list[str] = []
    parts = []
    for vectors, docs in read_shards(folder):
        ids.extend(d.id for d in docs)
        parts.append(vectors)
    manifest = shard_manifest(folder) or {}
    dim = int(manifest.get("dim", 0))
    return ids, (np.concatenate(parts) if parts else np.zeros((0, dim), np.float32))


class _SettingsOnly:
    """What FaissIndex needs of an encoder to index precomputed vectors: settings and dim."""

    def __init__(self, config: EncoderConfig, dim: int):
        self.config, self.dim = config, dim


def build_index(
    shards: PathLike,
    index_dir: PathLike,
    *,
    index_type: str = "flat",
    overwrite: bool = False,
    **index_kwargs,
):
    """Build a :class:`~tp_rag.index.FaissIndex` folder from a shard folder, without loading a
    model (the vectors are already there), and return it loaded (its encoder is built from the
    settings on first use, as after :meth:`FaissIndex.load`). ``index_kwargs``: ``nprobe``,
    ``ef_search``, ``train_size``."""
    from tp_rag.index import FaissIndex

    manifest = shard_manifest(shards)
    if manifest is None:
        raise ShardFolderError(f"{shards} has no {MANIFEST}; it is not a tp-rag shard folder")
    if not manifest.get("complete"):
        raise ShardFolderError(f"{shards} is incomplete (the embedding run did not finish); "
                               "rerun it to embed the rest")
    index_dir = Path(index_dir)
    if index_dir.exists() and any(index_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{index_dir} exists; pass overwrite=True (--overwrite) to replace it")
    config = EncoderConfig(**manifest["encoder"])
    documents: list[Document] = []
    parts = []
    for vectors, docs in read_shards(shards):
        parts.append(vectors)
        documents.extend(docs)
    if not documents:
        raise ValueError(f"{shards} holds no embeddings")
    index = FaissIndex(_SettingsOnly(config, int(manifest["dim"])), index_type, **index_kwargs)
    # One call: trained index types (IVF, PQ) then train on a sample of the whole corpus.
    index.add_embeddings(np.concatenate(parts), documents)
    if index_dir.exists() and overwrite:
        shutil.rmtree(index_dir)
    index.save(index_dir)
    return FaissIndex.load(index_dir)


__all__ = ["ShardFolderError", "ShardWriter", "build_index", "shard_table", "table_vectors", "list_shards", "load_embeddings",
           "read_shards", "row_to_document", "shard_manifest", "written_ids"]
