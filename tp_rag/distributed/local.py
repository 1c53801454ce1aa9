"""The same shard folder as :func:`~tp_rag.distributed.ray_embed.embed_corpus`, made in this
process with one encoder (no Ray): the baseline, and the path for machines without Ray."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from tp_rag.config import EncoderConfig
from tp_rag.distributed.ray_embed import EmbedCorpusResult, Kind
from tp_rag.distributed.shards import ShardWriter, next_run, shard_table, start_folder, write_json
from tp_rag.distributed.sources import corpus_paths, iter_documents

PathLike = Union[str, Path]


def embed_corpus_local(
    corpus: Union[PathLike, Sequence[PathLike]],
    output_dir: PathLike,
    config: EncoderConfig,
    *,
    encoder=None,
    kind: Kind = "document",
    batch_size: int = 64,
    shard_size: int = 4096,
    text_field: str = "text",
    id_field: Optional[str] = None,
    title_field: Optional[str] = "title",
    overwrite: bool = False,
) -> EmbedCorpusResult:
    """Embed ``corpus`` into Parquet shards under ``output_dir`` in this process (resumable the
    same way: documents already in complete shards are skipped). ``encoder``: an already
    loaded :class:`~tp_rag.Encoder` whose settings are ``config``."""
    from tp_rag.encoder import Encoder

    paths = corpus_paths(corpus)
    output_dir = Path(output_dir)
    manifest, done = start_folder(output_dir, config, paths, kind, text_field, id_field,
                                  title_field, overwrite)

    started = time.perf_counter()
    encoder = encoder or Encoder(config)
    loaded = time.perf_counter()
    writer = ShardWriter(output_dir, next_run(output_dir), shard_size)
    todo = (d for d in iter_documents(paths, text_field=text_field, id_field=id_field,
                                      title_field=title_field) if d.id not in done)
    while True:
        docs = list(itertools.islice(todo, batch_size))
        if not docs:
            break
        vectors = encoder.encode([d.embedding_text for d in docs], kind=kind, show_progress=False)
        writer.add(shard_table([d.id for d in docs], [d.text for d in docs],
                               [d.title or "" for d in docs],
                               [json.dumps(d.metadata, ensure_ascii=False) for d in docs], vectors))
        if manifest.get("dim") is None:
            manifest["dim"] = writer.dim
            write_json(output_dir / "embeddings.json", manifest)
    writer.close()
    ended = time.perf_counter()
    total = len(done) + writer.rows_written
    manifest.update(complete=True, count=total)
    write_json(output_dir / "embeddings.json", manifest)
    return EmbedCorpusResult(str(output_dir), total, writer.rows_written, len(done), writer.seq,
                             round(ended - started, 3), 0,
                             round(ended - loaded, 3) if writer.rows_written else None)
