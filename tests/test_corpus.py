"""Document readers: BEIR JSONL, generic JSONL, text folders, line files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tp_rag.corpus import Document, documents_from_texts, join_title, read_documents

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "data" / "corpus.jsonl"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_beir_corpus():
    docs = list(read_documents(CORPUS))
    assert len(docs) == 30 and len({d.id for d in docs}) == 30
    first = docs[0]
    assert first.id == "tp-001" and first.title == "Token Prepending"
    assert first.metadata == {"topic": "tp", "title": "Token Prepending"}
    assert first.embedding_text == f"Token Prepending. {first.text}"


@pytest.mark.parametrize("title, expected", [
    ("Cats", "Cats. They nap."),
    ("Why?", "Why? They nap."),
    ("  ", "They nap."),
    (None, "They nap."),
])
def test_title_join(title, expected):
    assert join_title(title, "They nap.") == expected


def test_generic_jsonl_fields_and_metadata(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [
        {"id": 7, "body": "first", "lang": "en"},
        {"body": "second", "source": {"page": 2}},
    ])
    docs = list(read_documents(path, text_field="body"))
    assert [d.id for d in docs] == ["7", "rows-2"]
    assert docs[0].metadata == {"lang": "en"} and docs[1].metadata == {"source": {"page": 2}}
    assert docs[0].embedding_text == "first"
    with pytest.raises(ValueError, match=r"rows.jsonl:2: no 'lang' field"):
        list(read_documents(path, text_field="body", id_field="lang"))


@pytest.mark.parametrize("content, pattern", [
    ('{"_id": "a", "text": "ok"}\n{not json}\n', r":2: invalid JSON"),
    ('["a list"]\n', r":1: expected a JSON object"),
    ('{"_id": "a", "body": "x"}\n', r"no string field 'text' \(fields: _id, body\)"),
    ('{"_id": "a", "text": "   "}\n', r"document 'a' has an empty text"),
    ('{"_id": ["x"], "text": "t"}\n', r"id must be a string or integer"),
])
def test_jsonl_errors_name_the_line(tmp_path, content, pattern):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=pattern):
        list(read_documents(path))


def test_text_folder(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.md").write_text("# Two\n\nSecond file.\n")
    (tmp_path / "one.txt").write_text("First file.")
    (tmp_path / "skip.json").write_text("{}")
    docs = list(read_documents(tmp_path))
    assert [d.id for d in docs] == ["b/two.md", "one.txt"]
    assert docs[0].text == "# Two\n\nSecond file." and docs[0].metadata == {"source": "b/two.md"}


def test_text_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no .txt"):
        read_documents(tmp_path)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        list(read_documents(tmp_path))
    (tmp_path / "empty.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        list(read_documents(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_documents(tmp_path / "missing.jsonl")


def test_line_file(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("alpha\n\n  beta  \n")
    assert [(d.id, d.text) for d in read_documents(path)] == [("lines-1", "alpha"), ("lines-3", "beta")]


def test_documents_from_texts():
    docs = documents_from_texts(["a", "b"], ids=["x", "y"], metadatas=[{"k": 1}, None])
    assert docs == [Document("x", "a", {"k": 1}), Document("y", "b", {})]
    generated = documents_from_texts(["a", "b"])
    assert len({d.id for d in generated}) == 2
    with pytest.raises(ValueError, match="same length"):
        documents_from_texts(["a"], ids=["x", "y"])
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        documents_from_texts(["a", 3])


def test_split_documents_into_word_passages():
    from tp_rag.corpus import Document, split_documents

    long = Document("d1", " ".join(f"w{i}" for i in range(25)), {"topic": "x"}, title="Title")
    short = Document("d2", "only five words in here", {}, None)
    out = list(split_documents([long, short], 10))
    assert [d.id for d in out] == ["d1#0", "d1#1", "d1#2", "d2"]
    assert [len(d.text.split()) for d in out] == [10, 10, 5, 5]
    assert " ".join(d.text for d in out[:3]) == long.text  # nothing lost, nothing repeated
    assert all(d.title == "Title" and d.metadata["topic"] == "x" and d.metadata["parent_id"] == "d1" for d in out[:3])
    assert [d.metadata["chunk"] for d in out] == [0, 1, 2, 0] and out[3].metadata["parent_id"] == "d2"
    assert out[1].embedding_text.startswith("Title. w10 ")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            list(split_documents([short], bad))
