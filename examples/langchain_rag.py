"""Retrieval with LangChain on tp-rag embeddings: corpus -> splitter -> FAISS -> retriever.

Offline, on the bundled Gemma 3 270M (no LLM generation: it prints the retrieved passages)::

    pip install -e . -e "integrations/langchain[examples]"
    python examples/langchain_rag.py "How does Token Prepending help decoder embeddings?" -k 3
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Optional, Sequence

from langchain_core.documents import Document
from langchain_text_splitters import RecursiveCharacterTextSplitter

from langchain_tp_rag import TokenPrependingEmbeddings

with warnings.catch_warnings():
    # langchain-community warns on import that it is being sunset; its FAISS store still works.
    warnings.simplefilter("ignore", DeprecationWarning)
    from langchain_community.vectorstores import FAISS
    from langchain_community.vectorstores.utils import DistanceStrategy

CORPUS = Path(__file__).parent / "data" / "corpus.jsonl"
DEFAULT_QUESTION = "How does Token Prepending help decoder-only language models embed sentences?"


def load_documents(path: Path = CORPUS) -> list[Document]:
    """One LangChain Document per corpus line (BEIR layout: _id, title, text, metadata)."""
    documents = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                metadata = {"id": row["_id"], "title": row.get("title", ""), **row.get("metadata", {})}
                documents.append(Document(page_content=row["text"], metadata=metadata))
    return documents


def build_vector_store(
    documents: list[Document],
    embeddings: TokenPrependingEmbeddings,
    chunk_size: int = 48,
    chunk_overlap: int = 8,
) -> FAISS:
    """Split into chunks of at most ``chunk_size`` tokens of the embedding model's own
    tokenizer, and index them. The vectors are L2-normalised, so inner product = cosine."""
    splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
        embeddings.encoder.tokenizer, chunk_size=chunk_size, chunk_overlap=chunk_overlap
    )
    chunks = splitter.split_documents(documents)
    return FAISS.from_documents(
        chunks, embeddings, distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    parser.add_argument("-k", type=int, default=3, help="passages to retrieve (default 3)")
    parser.add_argument("--preset", default="gemma-3-270m-retrieval", help="tp-rag preset")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="BEIR-style corpus.jsonl")
    parser.add_argument("--chunk-size", type=int, default=48, help="tokens per chunk")
    parser.add_argument("--chunk-overlap", type=int, default=8, help="tokens of overlap")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, *, encoder=None) -> list[Document]:
    """Run the pipeline and print the top-k passages; ``encoder`` shares a loaded tp_rag.Encoder."""
    args = parse_args(argv)
    if encoder is not None:
        embeddings = TokenPrependingEmbeddings(encoder=encoder)
    else:
        embeddings = TokenPrependingEmbeddings(preset=args.preset)
    store = build_vector_store(
        load_documents(args.corpus), embeddings, args.chunk_size, args.chunk_overlap
    )
    retriever = store.as_retriever(search_kwargs={"k": args.k})
    results = retriever.invoke(args.question)
    print(f"Question: {args.question}\n")
    for rank, doc in enumerate(results, 1):
        print(f"{rank}. [{doc.metadata['id']}] {doc.metadata['title']}")
        print(f"   {doc.page_content}\n")
    return results


if __name__ == "__main__":
    main()
