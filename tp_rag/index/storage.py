"""The on-disk index folder: plain files only, written atomically, verified before use.

Layout of ``INDEX_DIR/``::

    manifest.json            what the folder holds: encoder settings, dimension, index type,
                             document count, the name, size and sha256 of each data file, and
                             a checksum over the manifest's own canonical content
    index-<token>.faiss      the FAISS index (faiss.write_index)
    docs-<token>.jsonl       one JSON object per document: {"fid", "id", "text", "metadata"}
    <key>-<token>.<ext>      further data files (``extra_files`` of :func:`save_folder`)

Nothing is pickled: loading an untrusted folder parses JSON and hands FAISS a file whose size
and sha256 were checked first. The manifest's ``checksum`` (sha256 of its canonical JSON without
that key) catches a truncated or hand-edited manifest; it lives in the same folder, so it is no
signature: a folder is data, and the model it names is used only if the reader allows it
(:mod:`tp_rag.index.trust`).

Saving is atomic. The data files of a save get fresh names (``<token>`` is new each time) and
are written to ``*.tmp`` files, flushed and renamed; only then is ``manifest.json`` replaced
(write-temporary-then-rename, then the folder is fsynced): that is the commit point. A crash
anywhere before it leaves the previous manifest pointing at the previous, untouched files. After
it, the files of the generation before the previous one and any debris of interrupted saves are
removed, while the previous generation's files stay until the next save, so a reader that read
the old manifest just before the commit still finds every file it names. A failed save (full
disk, read-only folder) removes what it wrote and leaves the previous index as it was.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import hashlib
import json
import os
import re
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Optional

import faiss
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MANIFEST = "manifest.json"
FORMAT = "tp-rag-index"
FORMAT_VERSION = 2  # 2: the manifest carries its own checksum
MAX_MANIFEST_BYTES = 16 * 2**20
_DATA_FILE = re.compile(r"^[a-z][a-z0-9_]*-[0-9a-f]{8,64}\.[a-z0-9]{1,12}(\.tmp)?$")
_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
_EXT = re.compile(r"^[a-z0-9]{1,12}$")


class IndexFormatError(ValueError):
    """An index folder is missing pieces, corrupted, truncated or of an unknown format."""


class MissingDataFileError(IndexFormatError):
    """A data file the manifest names is not there (``name``): the folder is incomplete, or a
    newer save replaced it while the folder was being read."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


class LegacyIndexWarning(UserWarning):
    """The index folder was written by an older tp-rag (no manifest checksum)."""


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
    files: dict[str, FileEntry]  # "faiss", "docs", and any extra data files by key
    checksum: Optional[str] = Field(None, pattern=r"^sha256:[0-9a-f]{64}$")

    @field_validator("files")
    @classmethod
    def _both_files(cls, files):
        missing = {"faiss", "docs"} - set(files)
        if missing:
            raise ValueError(f"missing file entries: {', '.join(sorted(missing))}")
        bad = [key for key in files if not _KEY.match(key)]
        if bad:
            raise ValueError(f"invalid file keys: {', '.join(map(repr, bad))}")
        return files


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def manifest_checksum(data: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), ``checksum`` left out."""
    content = {k: v for k, v in data.items() if k != "checksum"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _reached(step: str) -> None:
    """A named step of a save. Does nothing; the crash tests replace it to kill the process
    exactly there (tests/test_faults.py)."""


# -- writing --------------------------------------------------------------------------------------
# An extra data file: key -> (extension, write(path)). The writer creates the file at ``path``.
ExtraFiles = Mapping[str, tuple[str, Callable[[Path], None]]]


def save_folder(path: Path, index: faiss.Index, records: Iterable[dict], manifest: dict,
                extra_files: Optional[ExtraFiles] = None) -> Manifest:
    """Write ``index``, ``records`` and ``extra_files`` into ``path`` and commit ``manifest``
    (plus ``files`` and ``checksum``). On failure nothing of this save is left behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if path.is_dir() and not (path / MANIFEST).exists() and not all(
        _is_ours(child.name) for child in path.iterdir()  # debris of an interrupted first save
    ):
        raise FileExistsError(
            f"{path} is a non-empty folder that is not a tp-rag index; refusing to write into it"
        )
    extra = dict(extra_files or {})
    for key, (ext, _) in extra.items():
        if key in ("faiss", "docs") or not _KEY.match(key) or not _EXT.match(ext.lstrip(".")):
            raise ValueError(f"invalid extra data file {key!r} ({ext!r})")
    written: list[Path] = []
    try:
        path.mkdir(parents=True, exist_ok=True)
        with _writer_lock(path):
            previous = _committed_names(path)
            token = uuid.uuid4().hex[:16]
            entries = {
                "faiss": _write_file(path / f"index-{token}.faiss",
                                     lambda tmp: _write_faiss(tmp, index), written),
                "docs": _write_file(path / f"docs-{token}.jsonl",
                                    lambda tmp: _write_records(tmp, records), written),
            }
            for key, (ext, writer) in extra.items():
                entries[key] = _write_file(path / f"{key}-{token}.{ext.lstrip('.')}", writer, written)
            data = Manifest.model_validate({**manifest, "format_version": FORMAT_VERSION,
                                            "files": entries, "checksum": None})
            content = data.model_dump(mode="json", exclude={"checksum"})
            content["checksum"] = manifest_checksum(content)
            committed = Manifest.model_validate(content)
            _write_atomic(path / MANIFEST, json.dumps(content, indent=2, ensure_ascii=False).encode())
            written.clear()  # committed: these files are the index now
            _reached("manifest-committed")
            keep = {entry["name"] for entry in entries.values()} | previous
            _remove_stale(path, keep)
            _reached("cleaned")
            return committed
    except OSError as err:
        for file in written:  # this save's renamed data files; the manifest never named them
            file.unlink(missing_ok=True)
        raise _save_error(path, err) from err
    except BaseException:
        for file in written:
            file.unlink(missing_ok=True)
        raise


def _save_error(path: Path, err: OSError) -> OSError:
    if err.errno == errno_codes.ENOSPC:
        why = "the disk is full"
    elif err.errno in (errno_codes.EROFS, errno_codes.EACCES, errno_codes.EPERM):
        why = "the folder is not writable"
    else:
        why = err.strerror or str(err)
    message = (f"saving the index to {path} failed ({why}: {err.strerror or err}); "
               "the index that was there is unchanged")
    return type(err)(err.errno, message) if err.errno is not None else OSError(message)


@contextlib.contextmanager
def _writer_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the folder itself for the length of a save, so saves from two
    processes never interleave (POSIX; no extra file in the folder)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, saves must not overlap
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _committed_names(path: Path) -> set[str]:
    """The data files the current manifest names (kept through the next save for readers)."""
    try:
        raw = json.loads((path / MANIFEST).read_bytes().decode("utf-8"))
        files = raw.get("files", {}) if isinstance(raw, dict) else {}
        return {e["name"] for e in files.values()
                if isinstance(e, dict) and isinstance(e.get("name"), str)
                and _DATA_FILE.match(e["name"])}
    except (OSError, ValueError, AttributeError):
        return set()


def _write_file(final: Path, write: Callable[[Path], None], written: list[Path]) -> dict:
    """Write through ``write(tmp)``, fsync, rename to ``final``; its FileEntry as a dict."""
    tmp = final.with_name(final.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        _reached(f"{final.name.split('-')[0]}-tmp-written")
        size, digest = _file_digest(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    written.append(final)
    _reached(f"{final.name.split('-')[0]}-renamed")
    return {"name": final.name, "bytes": size, "sha256": digest}


def _write_faiss(tmp: Path, index: faiss.Index) -> None:
    open(tmp, "wb").close()  # a read-only folder or a full disk fails here as an OSError
    try:
        faiss.write_index(index, str(tmp))
    except RuntimeError as err:  # FAISS reports I/O failures (a full disk) as RuntimeError
        from tp_rag.index.factory import _first_line

        raise OSError(errno_codes.EIO, f"FAISS could not write {tmp.name}: {_first_line(err)}") from None


def _write_records(tmp: Path, records: Iterable[dict]) -> None:
    with open(tmp, "wb") as handle:
        for record in records:
            handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        handle.flush()


def _write_atomic(final: Path, data: bytes) -> None:
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _reached("manifest-tmp-written")
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
    """Remove older generations and debris; after the commit, so a failure here is harmless."""
    for child in path.iterdir():
        if child.name not in keep and child.name != MANIFEST and _is_ours(child.name):
            with contextlib.suppress(OSError):
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
        raise IndexFormatError(
            f"{file} is corrupted or truncated (not valid JSON: {err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IndexFormatError(f"{file} is not a tp-rag index manifest")
    version = data.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} uses index format {version}; this tp-rag reads format {FORMAT_VERSION} "
            "(upgrade tp-rag)"
        )
    _check_manifest_checksum(file, data)
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        raise IndexFormatError(f"{file} is invalid: {one_line(err)}") from None


def _check_manifest_checksum(file: Path, data: dict) -> None:
    stored = data.get("checksum")
    if stored is None and data.get("format_version") == 1:
        warnings.warn(
            f"{file} was written by an older tp-rag and has no checksum, so edits to it cannot "
            "be detected; saving the index again (tp-rag index add/delete, or "
            "FaissIndex.load(...).save(...)) adds one", LegacyIndexWarning, stacklevel=4)
        return
    if not isinstance(stored, str):
        raise IndexFormatError(f"{file} has no checksum; it was not written by tp-rag "
                               "(rebuild the index)")
    if stored != manifest_checksum(data):
        raise IndexFormatError(
            f"{file} was modified after it was written: its content does not match its "
            "checksum (restore the folder or rebuild the index)")


def verify_file(path: Path, entry: FileEntry) -> Path:
    file = path / entry.name
    if not file.is_file():
        raise MissingDataFileError(f"{path} is incomplete: {entry.name} is missing", entry.name)
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
