"""Reading documents to index: BEIR ``corpus.jsonl``, any JSONL with a text field, a folder of
``.txt``/``.md`` files, or a plain text file with one passage per line.

Every reader yields :class:`Document` values lazily, so a large corpus is never held in memory
by the reader itself. What gets *embedded* is :attr:`Document.embedding_text`: for rows with a
title (BEIR) that is the title and the text joined as ``"{title}. {text}"`` (no extra full stop
when the title already ends in ``.``, ``!``, ``?`` or ``:``), otherwise the text alone. The text
stored beside the vector is the body ``text``; the title goes into ``metadata["title"]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

PathLike = Union[str, Path]

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
_TITLE_ENDINGS = (".", "!", "?", ":")


@dataclass
class Document:
    """One passage: a unique ``id``, its ``text``, and JSON-serialisable ``metadata``."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    title: Optional[str] = None

    @property
    def embedding_text(self) -> str:
        """The string handed to ``Encoder.encode_documents``: title and text joined."""
        return join_title(self.title, self.text)


def join_title(title: Optional[str], text: str) -> str:
    """``"{title}. {text}"``; the text alone when there is no title."""
    title = (title or "").strip()
    if not title:
        return text
    separator = " " if title.endswith(_TITLE_ENDINGS) else ". "
    return f"{title}{separator}{text}"


def split_documents(documents: Iterable[Document], words: int) -> Iterator[Document]:
    """Documents longer than ``words`` words split into passages of ``words`` words.

    A split document's passages get ids ``"{id}#0"``, ``"{id}#1"``, ... and keep its title (each
    passage is embedded as ``"title. passage"``) and metadata, plus ``parent_id`` and ``chunk``;
    a document that fits keeps its id and gets ``parent_id`` and ``chunk`` 0. Long documents
    cut to ``max_length`` lose their end; on SciFact, 150-word passages retrieved documents far
    better than whole abstracts cut to 256 tokens (eval/results/README.md).
    """
    if isinstance(words, bool) or not isinstance(words, int) or words < 1:
        raise ValueError(f"words must be a positive integer, got {words!r}")
    for doc in documents:
        tokens = doc.text.split()
        if len(tokens) <= words:
            yield Document(doc.id, doc.text, {**doc.metadata, "parent_id": doc.id, "chunk": 0}, doc.title)
            continue
        for n, start in enumerate(range(0, len(tokens), words)):
            yield Document(f"{doc.id}#{n}", " ".join(tokens[start:start + words]),
                           {**doc.metadata, "parent_id": doc.id, "chunk": n}, doc.title)


def read_documents(
    path: PathLike,
    *,
    text_field: str = "text",
    id_field: Optional[str] = None,
    title_field: Optional[str] = "title",
) -> Iterator[Document]:
    """Documents from ``path``, chosen by what it is:

    * a folder: every ``.txt``/``.md`` file below it (sorted) is one document, its id the
      path relative to the folder (``notes/a.md``); metadata ``{"source": id}``.
    * a ``.jsonl`` file: one JSON object per line. The id comes from ``id_field`` (default:
      ``_id``, then ``id``, else ``"{file stem}-{line}"``), the text from ``text_field``, the
      title from ``title_field``; BEIR's ``metadata`` object is kept, and any other fields are
      added to the metadata.
    * any other file (``.txt``, ...): one document per non-empty line, ids ``"{stem}-{line}"``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        return _read_folder(path)
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path, text_field, id_field, title_field)
    return _read_lines(path)


def _read_folder(root: Path) -> Iterator[Document]:
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
    )
    if not files:
        raise ValueError(f"{root} holds no {'/'.join(TEXT_SUFFIXES)} files")
    return _folder_documents(root, files)


def _folder_documents(root: Path, files: list[Path]) -> Iterator[Document]:
    for file in files:
        doc_id = file.relative_to(root).as_posix()
        text = _read_text(file)
        if not text.strip():
            raise ValueError(f"{file} is empty; there is nothing to index")
        yield Document(id=doc_id, text=text.strip(), metadata={"source": doc_id})


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{file} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def _read_lines(file: Path) -> Iterator[Document]:
    for number, line in enumerate(_read_text(file).splitlines(), start=1):
        if line.strip():
            yield Document(id=f"{file.stem}-{number}", text=line.strip())


def _read_jsonl(
    file: Path, text_field: str, id_field: Optional[str], title_field: Optional[str]
) -> Iterator[Document]:
    for number, row in iter_jsonl(file):
        yield row_to_document(row, text_field=text_field, id_field=id_field,
                              title_field=title_field, fallback_id=f"{file.stem}-{number}",
                              where=f"{file}:{number}")


def row_to_document(
    row: dict,
    *,
    text_field: str = "text",
    id_field: Optional[str] = None,
    title_field: Optional[str] = "title",
    fallback_id: Optional[str] = None,
    where: Optional[str] = None,
) -> Document:
    """One corpus record as a :class:`Document`: the id from ``id_field``, else ``_id``, else
    ``id``, else ``fallback_id`` (the file reader passes the line); BEIR's ``metadata`` object and
    any other fields become metadata; the title also goes to ``metadata["title"]``."""
    if id_field is not None:
        if id_field not in row:
            raise ValueError(f"{where or 'a record'}: no {id_field!r} field")
        doc_id = row[id_field]
    else:
        doc_id = row.get("_id", row.get("id", fallback_id))
        if doc_id is None:
            raise ValueError(f"{where or 'a record'}: no '_id' or 'id' field (choose one with "
                             f"id_field / --id-field): {_short(row)}")
    where = where or f"record {doc_id!r}"
    if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
        raise ValueError(f"{where}: id must be a string or integer, got {doc_id!r}")
    text = row.get(text_field)
    if not isinstance(text, str):
        found = ", ".join(sorted(row)) or "none"
        raise ValueError(
            f"{where}: no string field {text_field!r} (fields: {found}); "
            "pick the text field with text_field / --text-field"
        )
    title = row.get(title_field) if title_field else None
    if title is not None and not isinstance(title, str):
        raise ValueError(f"{where}: {title_field!r} must be a string")
    if not text.strip() and not (title or "").strip():
        raise ValueError(f"{where}: document {doc_id!r} has an empty text")
    used = {text_field, title_field, id_field or "_id", "id" if id_field is None else None}
    metadata: dict[str, Any] = {}
    nested = row.get("metadata")
    if isinstance(nested, dict):
        metadata.update(nested)
    for key, value in row.items():
        if key not in used and key != "metadata":
            metadata[key] = value
    if title:
        metadata["title"] = title
    return Document(id=str(doc_id), text=text, metadata=metadata, title=title or None)


def _short(row: dict) -> str:
    text = json.dumps(row, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def iter_jsonl(file: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line; a clear error for bad lines."""
    with open(file, "rb") as handle:  # decoded line by line, so an error names its line
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:  # a binary file or another encoding
                raise ValueError(f"{file}:{number}: not UTF-8 text ({err.reason} at byte "
                                 f"{err.start}); JSONL must be UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}:{number}: invalid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{file}:{number}: expected a JSON object")
            yield number, row


def documents_from_texts(
    texts: Iterable[str],
    ids: Optional[Iterable[str]] = None,
    metadatas: Optional[Iterable[Optional[dict]]] = None,
) -> list[Document]:
    """Pair texts with ids (default: fresh UUIDs) and metadata; lengths must agree."""
    import uuid

    texts = list(texts)
    ids = [str(uuid.uuid4()) for _ in texts] if ids is None else [str(i) for i in ids]
    metadatas = [{} for _ in texts] if metadatas is None else [dict(m or {}) for m in metadatas]
    if not len(texts) == len(ids) == len(metadatas):
        raise ValueError(
            f"got {len(texts)} texts, {len(ids)} ids and {len(metadatas)} metadata entries; "
            "they must have the same length"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
    return [Document(id=i, text=t, metadata=m) for t, i, m in zip(texts, ids, metadatas)]
