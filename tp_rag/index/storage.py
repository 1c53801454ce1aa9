"""The on-disk index folder: plain files only, written atomically, verified before use.

Layout of ``INDEX_DIR/``::

    manifest.json            what the folder holds: encoder settings, dimension, index type,
                             document count, and the name, size and sha256 of each data file
    index-<token>.faiss      the FAISS index (faiss.write_index)
    docs-<token>.jsonl       one JSON object per document: {"fid", "id", "text", "metadata"}

Nothing is pickled: loading an untrusted folder parses JSON and hands FAISS a file whose size
and sha256 were checked first (that guards against truncation and corruption; the checksum lives
in the same folder, so it is no signature).

Saving is atomic. The data files of a save get fresh names (``<token>`` is new each time) and
are written to ``*.tmp`` files, flushed and renamed; only then is ``manifest.json`` replaced
(again write-temporary-then-rename) which is the commit point. A crash anywhere before it leaves
the previous manifest pointing at the previous, untouched files; after it, the old files are
removed. Readers always see one complete version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

import faiss
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MANIFEST = "manifest.json"
FORMAT = "tp-rag-index"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 16 * 2**20
_DATA_FILE = re.compile(r"^(index-[0-9a-f]+\.faiss|docs-[0-9a-f]+\.jsonl)(\.tmp)?$")


class IndexFormatError(ValueError):
    """An index folder is missing pieces, corrupted, truncated or of an unknown format."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not _DATA_FILE.match(name) or name.endswith(".tmp"):
            raise ValueError(f"unexpected data file name {name!r}")
        return name


class Manifest(BaseModel):
    """``manifest.json``. Unknown keys are kept (``extra="allow"``) for forward compatibility."""

    model_config = ConfigDict(extra="allow")

    format: Literal["tp-rag-index"] = FORMAT
    format_version: int = FORMAT_VERSION
    tp_rag_version: str
    faiss_version: str
    created_at: str
    encoder: dict[str, Any]
    preset: Optional[str] = None
    dim: int = Field(ge=1)
    normalize: bool
    metric: Literal["inner_product"] = "inner_product"
    index_type: str
    factory: str
    search_params: dict[str, Optional[int]] = Field(default_factory=dict)
    count: int = Field(ge=0)
    next_fid: int = Field(ge=0)
    document_text: str = "title. text (BEIR rows); the text alone otherwise"
    files: dict[Literal["faiss", "docs"], FileEntry]

    @field_validator("files")
    @classmethod
    def _both_files(cls, files):
        missing = {"faiss", "docs"} - set(files)
        if missing:
            raise ValueError(f"missing file entries: {', '.join(sorted(missing))}")
        return files


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# -- writing --------------------------------------------------------------------------------------
def save_folder(path: Path, index: faiss.Index, records: Iterable[dict], manifest: dict) -> Manifest:
    """Write ``index`` and ``records`` into ``path`` and commit ``manifest`` (plus ``files``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if path.is_dir() and not (path / MANIFEST).exists() and not all(
        _is_ours(child.name) for child in path.iterdir()  # debris of an interrupted first save
    ):
        raise FileExistsError(
            f"{path} is a non-empty folder that is not a tp-rag index; refusing to write into it"
        )
    path.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:16]
    faiss_entry = _write_faiss(path / f"index-{token}.faiss", index)
    docs_entry = _write_docs(path / f"docs-{token}.jsonl", records)
    data = {**manifest, "files": {"faiss": faiss_entry, "docs": docs_entry}}
    committed = Manifest.model_validate(data)
    _write_atomic(path / MANIFEST, json.dumps(committed.model_dump(mode="json"), indent=2).encode())
    _remove_stale(path, keep={faiss_entry["name"], docs_entry["name"]})
    return committed


def _write_faiss(final: Path, index: faiss.Index) -> dict:
    tmp = final.with_name(final.name + ".tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    size, digest = _file_digest(tmp)
    os.replace(tmp, final)
    return {"name": final.name, "bytes": size, "sha256": digest}


def _write_docs(final: Path, records: Iterable[dict]) -> dict:
    tmp = final.with_name(final.name + ".tmp")
    digest, size = hashlib.sha256(), 0
    with open(tmp, "wb") as handle:
        for record in records:
            line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
            handle.write(line)
            digest.update(line)
            size += len(line)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    return {"name": final.name, "bytes": size, "sha256": digest.hexdigest()}


def _write_atomic(final: Path, data: bytes) -> None:
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(final.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _is_ours(name: str) -> bool:
    stale_manifest = name.startswith(f".{MANIFEST}.") and name.endswith(".tmp")
    return bool(_DATA_FILE.match(name)) or stale_manifest or name == MANIFEST


def _remove_stale(path: Path, keep: set[str]) -> None:
    for child in path.iterdir():
        if child.name not in keep and child.name != MANIFEST and _is_ours(child.name):
            child.unlink(missing_ok=True)


def _file_digest(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


# -- reading --------------------------------------------------------------------------------------
def read_manifest(path: Path) -> Manifest:
    """Parse and validate ``path/manifest.json`` (no data files are read)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no index folder at {path}")
    file = path / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a tp-rag index folder (no {MANIFEST})")
    if file.stat().st_size > MAX_MANIFEST_BYTES:
        raise IndexFormatError(f"{file} is implausibly large; not a tp-rag manifest")
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexFormatError(f"{file} is corrupted (not valid JSON: {err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IndexFormatError(f"{file} is not a tp-rag index manifest")
    version = data.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} uses index format {version}; this tp-rag reads format {FORMAT_VERSION} "
            "(upgrade tp-rag)"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        raise IndexFormatError(f"{file} is invalid: {one_line(err)}") from None


def verify_file(path: Path, entry: FileEntry) -> Path:
    file = path / entry.name
    if not file.is_file():
        raise IndexFormatError(f"{path} is incomplete: {entry.name} is missing")
    size = file.stat().st_size
    if size != entry.bytes:
        raise IndexFormatError(
            f"{file} is truncated or was modified: {size} bytes, the manifest says {entry.bytes}"
        )
    if _file_digest(file)[1] != entry.sha256:
        raise IndexFormatError(f"{file} is corrupted: its sha256 does not match the manifest")
    return file


def read_faiss(path: Path, manifest: Manifest) -> faiss.Index:
    file = verify_file(path, manifest.files["faiss"])
    try:
        index = faiss.read_index(str(file))
    except RuntimeError as err:
        from tp_rag.index.factory import _first_line

        raise IndexFormatError(f"{file} could not be read by FAISS: {_first_line(err)}") from None
    if index.d != manifest.dim:
        raise IndexFormatError(
            f"{file} holds {index.d}-dimensional vectors; the manifest says {manifest.dim}"
        )
    if index.ntotal != manifest.count:
        raise IndexFormatError(
            f"{file} holds {index.ntotal} vectors; the manifest says {manifest.count}"
        )
    return index


def read_docs(path: Path, manifest: Manifest) -> list[dict]:
    file = verify_file(path, manifest.files["docs"])
    records = []
    with open(file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise IndexFormatError(f"{file}:{number}: invalid JSON ({err.msg})") from None
            if not (
                isinstance(record, dict)
                and isinstance(record.get("fid"), int)
                and isinstance(record.get("id"), str)
                and isinstance(record.get("text"), str)
                and isinstance(record.get("metadata", {}), dict)
            ):
                raise IndexFormatError(
                    f"{file}:{number}: expected an object with fid, id, text and metadata"
                )
            records.append(record)
    if len(records) != manifest.count:
        raise IndexFormatError(
            f"{file} holds {len(records)} documents; the manifest says {manifest.count}"
        )
    return records


def one_line(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item.get("loc", ())) or "value"
        parts.append(f"{where}: {item.get('msg')}")
    return "; ".join(parts)
