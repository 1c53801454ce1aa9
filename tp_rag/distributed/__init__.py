"""Scale-out corpus embedding with Ray Data (needs the ``ray`` extra), and FAISS indexes built
from the resulting shards (needs only pyarrow).

>>> from tp_rag.distributed import embed_corpus, build_index
>>> embed_corpus("corpus.jsonl", "shards/", preset_config("gemma-3-270m"), num_actors=2)
>>> build_index("shards/", "my-index")
"""

from tp_rag.distributed.shards import (
    ShardFolderError,
    build_index,
    list_shards,
    load_embeddings,
    read_shards,
    row_to_document,
    shard_manifest,
    written_ids,
)


from tp_rag.distributed.sources import corpus_paths, iter_documents


def embed_corpus_local(*args, **kwargs):
    """See :func:`tp_rag.distributed.local.embed_corpus_local` (one process, no Ray)."""
    from tp_rag.distributed.local import embed_corpus_local as run

    return run(*args, **kwargs)


def embed_corpus(*args, **kwargs):
    """See :func:`tp_rag.distributed.ray_embed.embed_corpus` (imported on use: Ray is optional)."""
    from tp_rag.distributed.ray_embed import embed_corpus as run

    return run(*args, **kwargs)


__all__ = ["ShardFolderError", "build_index", "corpus_paths", "embed_corpus", "embed_corpus_local",
           "iter_documents", "list_shards", "load_embeddings",
           "read_shards", "row_to_document", "shard_manifest", "written_ids"]
