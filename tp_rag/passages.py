"""Long documents as token-budget passages, and passage hits grouped back into documents.

A prompt holds ``encoder.text_budget("document")`` text tokens (``max_length`` minus the
document template); anything longer is cut, so the end of a long document would never be seen.
:func:`split_passages` therefore splits a document whose ``"title. text"`` exceeds that budget
into windows of the body's tokens (the encoder's own tokenizer), each at most
``passage_tokens`` long (default: as much as fits beside the title), consecutive windows
sharing ``overlap`` tokens (at most half a passage; the last passage is a full window ending
at the document's end, so it may overlap more). Each passage is embedded as ``"title. passage"``; it keeps the
document's metadata plus ``parent_id``, ``passage`` (0-based), and ``char_start``/``char_end``
(its span in the body, so the body can be rebuilt, :func:`join_passages`). A document that fits
is passed through unchanged: same id, text and metadata.

:func:`group_by_parent` turns a passage ranking into a document ranking: each document once,
at its best passage's score (``"max"``, chosen on SciFact train; eval/results/rag_default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

from tp_rag.corpus import Document, join_title

# Chosen on SciFact qrels/train.tsv with the retrieval preset (eval/results/rag_default/).
DEFAULT_OVERLAP = 32
PASSAGE_SEPARATOR = "#p"  # passage ids: "{document id}#p{n}"
_MARGIN = 2  # tokens kept free: the title and the passage may merge differently when joined


@dataclass(frozen=True)
class PassageSettings:
    """How documents are split: ``passage_tokens`` (``None``: fill the budget) and ``overlap``."""

    passage_tokens: Optional[int] = None
    overlap: int = DEFAULT_OVERLAP

    def __post_init__(self):
        if self.passage_tokens is not None and (
            isinstance(self.passage_tokens, bool) or not isinstance(self.passage_tokens, int)
            or self.passage_tokens < 8
        ):
            raise ValueError(f"passage_tokens must be an integer of at least 8, got {self.passage_tokens!r}")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or self.overlap < 0:
            raise ValueError(f"overlap must be a non-negative integer, got {self.overlap!r}")
        if self.passage_tokens is not None and self.overlap >= self.passage_tokens:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than passage_tokens "
                             f"({self.passage_tokens})")

    def to_dict(self) -> dict:
        return {"passage_tokens": self.passage_tokens, "overlap": self.overlap}


def parent_of(doc_id: str, metadata: dict[str, Any]) -> str:
    """The document a stored record belongs to: its ``parent_id``, else itself."""
    parent = metadata.get("parent_id")
    return parent if isinstance(parent, str) and parent else doc_id


def _token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def split_passages(
    documents: Iterable[Document], encoder, settings: PassageSettings = PassageSettings()
) -> Iterator[Document]:
    """``documents`` with every one longer than the encoder's document budget split into
    passages (see the module docstring). Raises ``ValueError`` when a title alone leaves too
    little room for text."""
    budget = encoder.text_budget("document")
    tokenizer = encoder.tokenizer
    for doc in documents:
        if _token_count(tokenizer, doc.embedding_text) <= budget:
            yield doc
            continue
        yield from split_document(doc, tokenizer, budget, settings)


def split_document(doc: Document, tokenizer, budget: int, settings: PassageSettings) -> list[Document]:
    """One document as passages that each fit ``budget`` tokens with its title."""
    title_cost = _token_count(tokenizer, join_title(doc.title, "x")) - 1 if doc.title else 0
    room = budget - title_cost - _MARGIN
    size = min(settings.passage_tokens or room, room)
    if size < 8:
        raise ValueError(
            f"document {doc.id!r}: its title takes {title_cost} of the {budget} text tokens, "
            f"leaving {max(room, 0)}: too few for passages (raise max_length or shorten the title)")
    overlap = min(settings.overlap, size // 2)  # at most half a passage: each one moves on
    spans = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    passages, start, n = [], 0, 0
    while start < len(spans):
        stop = min(start + size, len(spans))
        while True:  # re-tokenised with the title, a window may come out a token longer
            lo, hi = spans[start][0], spans[stop - 1][1]
            text = doc.text[lo:hi]
            stripped = len(text) - len(text.lstrip())
            lo, text = lo + stripped, text.strip()
            if stop - start <= 1 or _token_count(tokenizer, join_title(doc.title, text)) <= budget:
                break
            stop -= 1
        if text:
            metadata = {**doc.metadata, "parent_id": doc.id, "passage": n,
                        "char_start": lo, "char_end": lo + len(text)}
            passages.append(Document(f"{doc.id}{PASSAGE_SEPARATOR}{n}", text, metadata, doc.title))
            n += 1
        if stop >= len(spans):
            break
        following = max(stop - overlap, start + 1)
        if following + size > len(spans):  # the last passage: a full window ending at the end
            following = max(len(spans) - size, start + 1)
        start = following
    return passages


def join_passages(passages: Sequence[tuple[str, dict]]) -> str:
    """A document's body rebuilt from its passages ``(text, metadata)`` in order: the
    overlaps are dropped using ``char_start``/``char_end``; passages without them (word
    passages of older indexes) are joined with a space."""
    body, end = "", None
    for text, metadata in passages:
        start, stop = metadata.get("char_start"), metadata.get("char_end")
        if not isinstance(start, int) or not isinstance(stop, int) or end is None:
            body = f"{body} {text}" if body else text
        elif start >= end:
            body += " " + text if start > end else text
        else:
            body += text[end - start:]
        end = stop if isinstance(stop, int) else None
    return body


@dataclass
class ParentHit:
    """One document in a grouped ranking: its best passage and score."""

    parent_id: str
    passage_key: Any  # what the caller ranks (a FAISS id, a record id)
    score: float
    passages: int  # how many of its passages the ranking held


def group_by_parent(
    ranked: Sequence[tuple[Any, str, float]], k: Optional[int] = None
) -> list[ParentHit]:
    """``(key, parent id, score)`` best first -> each parent once, at its best passage's score
    (the first it appears with), best first; at most ``k``."""
    best: dict[str, ParentHit] = {}
    for key, parent, score in ranked:
        hit = best.get(parent)
        if hit is None:
            best[parent] = ParentHit(parent, key, float(score), 1)
        else:
            hit.passages += 1
    out = sorted(best.values(), key=lambda h: -h.score)  # stable: input order breaks ties
    return out[:k] if k is not None else out


__all__ = [
    "DEFAULT_OVERLAP", "PASSAGE_SEPARATOR", "ParentHit", "PassageSettings", "group_by_parent",
    "join_passages", "parent_of", "split_document", "split_passages",
]
