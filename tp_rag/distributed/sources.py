"""Where corpus records come from: JSONL or Parquet files (or folders of them)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from tp_rag.corpus import Document, iter_jsonl, row_to_document

PathLike = Union[str, Path]
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def corpus_paths(corpus: Union[PathLike, Sequence[PathLike]]) -> list:
    """Files of a corpus: the given files, and the .jsonl/.parquet files below given folders
    (sorted). All JSONL or all Parquet. URIs (``s3://...``, ``local://...``) are passed to Ray
    as they are: on a cluster of several machines every node must be able to read the corpus
    (shared storage, object store, or ``local://`` for a file on the driver's node)."""
    items = [corpus] if isinstance(corpus, (str, Path)) else list(corpus)
    if not items:
        raise ValueError("no corpus files given")
    paths: list = []
    for item in items:
        if isinstance(item, str) and "://" in item:
            if not item.lower().endswith((*JSON_SUFFIXES, ".parquet")):
                raise ValueError(f"{item}: expected a .jsonl or .parquet file")
            paths.append(item)
            continue
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.rglob("*")
                           if p.is_file() and p.suffix.lower() in (*JSON_SUFFIXES, ".parquet"))
            if not found:
                raise ValueError(f"{item} holds no .jsonl or .parquet files")
            paths.extend(found)
        elif item.is_file():
            if item.suffix.lower() not in (*JSON_SUFFIXES, ".parquet"):
                raise ValueError(f"{item}: expected a .jsonl or .parquet file")
            paths.append(item)
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
    if len({_parquet(p) for p in paths}) > 1:
        raise ValueError("a mix of JSONL and Parquet files; embed them in separate runs")
    return [p if isinstance(p, str) else p.resolve() for p in paths]


def _parquet(path) -> bool:
    return str(path).lower().endswith(".parquet")


def is_parquet(paths: Sequence) -> bool:
    return bool(paths) and _parquet(paths[0])


def iter_documents(paths: Sequence[Path], *, text_field: str = "text", id_field: Optional[str] = None,
                   title_field: Optional[str] = "title") -> Iterator[Document]:
    """The documents of ``paths`` in order, streamed (the single-process path)."""
    fields = dict(text_field=text_field, id_field=id_field, title_field=title_field)
    for path in paths:
        if isinstance(path, str):
            raise ValueError(f"{path}: URIs are read through Ray only (use --ray)")
        if is_parquet([path]):
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    yield row_to_document(row, **fields)
            continue
        for number, row in iter_jsonl(Path(path)):
            yield row_to_document(row, where=f"{path}:{number}", **fields)
