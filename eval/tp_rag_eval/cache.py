"""On-disk embedding cache, content-addressed.

One store per *vector-relevant* setting set (model, templates for the kind, TP on/off and its
layers, output layer, preprocessing, max_length, dtype, normalisation) holds the vectors of every
text ever embedded with those settings, keyed by the text's sha256. Batch size, device and
progress bars do not change the key. A corpus (or a subset of it, or a new query set) is looked
up text by text, so a rerun, a subset of a cached corpus or new queries only embed what is
missing. Stores are written in chunks, so a long job that is stopped resumes where it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

CACHE_FORMAT = 1
SAVE_EVERY = 256  # texts between writes of the store (resumability of long jobs)


def _write_atomically(target: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(handle)`` into a temporary file beside ``target``, then rename it over ``target``:
    a stopped job leaves the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def corpus_hash(texts: Sequence[str]) -> str:
    """Order-independent hash of a set of texts (a corpus as embedded)."""
    digest = hashlib.sha256()
    for h in sorted({text_hash(t) for t in texts}):
        digest.update(h.encode())
    return digest.hexdigest()


def vector_settings(encoder, kind: str = "text") -> dict[str, Any]:
    """The settings that change the vectors ``encoder`` gives for ``kind`` texts."""
    if hasattr(encoder, "cache_settings"):
        return {"kind_templates": kind, **encoder.cache_settings(kind)}
    cfg = encoder.config
    settings: dict[str, Any] = {
        "cache_format": CACHE_FORMAT,
        "model": cfg.model,
        "templates": cfg.templates(kind),
        "token_prepending": cfg.tp_for(kind),  # per kind: queries and documents can differ
        "output_layer": encoder.output_layer,  # resolved, so -1 and 18 share a store
        "preprocess": cfg.preprocess,
        "max_length": cfg.max_length,
        # what the model runs in, so "auto" is stored as what it resolved to on this machine
        "dtype": getattr(encoder, "dtype", None) or cfg.dtype,
        "normalize": cfg.normalize,
    }
    if cfg.tp_for(kind):
        settings.update(tp_start=cfg.tp_start, tp_exit=cfg.tp_exit, pst_init=cfg.pst_init)
    if getattr(cfg, "pooling", "last") != "last":  # absent for last-token: older stores stay valid
        settings["pooling"] = cfg.pooling
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is not None:
        settings["tokenizer_probe"] = tokenizer_fingerprint(tokenizer)
    return settings


TOKENIZER_PROBE = 'Token Prepending: "Hello world", microstructural 123 - está tocando violão.'


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of how the tokenizer splits a probe text. The model *name* does not pin the
    tokenizer: a bundled GGUF converted by another transformers version can tokenize
    differently (transformers 5.17 turned Gemma 3's into a character-level one), and vectors
    cached under the same name would then be silently mixed."""
    ids = tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]


def settings_key(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_key(encoder, kind: str = "text") -> str:
    return settings_key(vector_settings(encoder, kind))


class EmbeddingStore:
    """Vectors of one setting set, looked up by text hash; stored as ``<key>.npz`` + ``.json``."""

    def __init__(self, directory: Path, key: str, settings: Optional[dict] = None):
        self.directory = Path(directory)
        self.key = key
        self.settings = settings
        self.path = self.directory / f"{key}.npz"
        self.hashes: list[str] = []
        self.vectors: Optional[np.ndarray] = None
        self.index: dict[str, int] = {}
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as data:
                self.hashes = [h.decode("ascii") for h in data["hashes"]]
                self.vectors = np.asarray(data["vectors"], dtype=np.float32)
            self.index = {h: i for i, h in enumerate(self.hashes)}

    def __len__(self) -> int:
        return len(self.hashes)

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        start = len(self.hashes)
        self.hashes.extend(hashes)
        self.vectors = vectors if self.vectors is None else np.concatenate([self.vectors, vectors])
        for i, h in enumerate(hashes):
            self.index[h] = start + i

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.path, lambda handle: np.savez(
            handle, hashes=np.array(self.hashes, dtype="S64"), vectors=self.vectors))
        if self.settings is not None:
            from tp_rag_eval.common import now_utc, versions

            meta = {"settings": self.settings, "texts": len(self.hashes),
                    "last_written": now_utc(), "written_by": versions()}
            (self.directory / f"{self.key}.json").write_text(json.dumps(meta, indent=1) + "\n")

    def provenance(self) -> dict:
        """What wrote this store (versions, device, date), from its ``.json`` beside it."""
        meta = self.directory / f"{self.key}.json"
        if not meta.is_file():
            return {}
        data = json.loads(meta.read_text())
        return {k: data.get(k) for k in ("texts", "last_written", "written_by")}

    def lookup(self, hashes: Sequence[str]) -> np.ndarray:
        return self.vectors[[self.index[h] for h in hashes]]


def cached_encode(
    encoder,
    texts: Sequence[str],
    kind: str = "text",
    cache_dir: Optional[Path] = None,
    show_progress: bool = True,
    desc: Optional[str] = None,
    chunk: int = SAVE_EVERY,
) -> np.ndarray:
    """``encoder.encode(texts, kind=kind)`` through the on-disk cache (``cache_dir=None``: none).

    Returns float32 ``(len(texts), dim)`` in the order of ``texts``.
    """
    texts = list(texts)
    if cache_dir is None:
        return np.asarray(encoder.encode(texts, kind=kind, show_progress=show_progress),
                          dtype=np.float32)
    settings = vector_settings(encoder, kind)
    store = EmbeddingStore(Path(cache_dir), settings_key(settings), settings)
    hashes = [text_hash(t) for t in texts]
    missing: dict[str, str] = {}
    for h, t in zip(hashes, texts):
        if h not in store.index and h not in missing:
            missing[h] = t
    if missing:
        # Similar lengths together: the encoder pads within a chunk's batches.
        todo = sorted(missing.items(), key=lambda item: -len(item[1]))
        bar = tqdm(total=len(todo), desc=desc or f"Encoding {kind}s", unit="text",
                   disable=not show_progress, dynamic_ncols=True)
        step = max(1, min(chunk, 128))  # small steps: a live ETA; saves every `chunk` texts
        unsaved = 0
        with bar:
            for start in range(0, len(todo), step):
                part = todo[start : start + step]
                vectors = encoder.encode([t for _, t in part], kind=kind, show_progress=False)
                store.add([h for h, _ in part], np.asarray(vectors, dtype=np.float32))
                unsaved += len(part)
                if unsaved >= chunk or start + step >= len(todo):
                    store.save()
                    unsaved = 0
                bar.update(len(part))
    return store.lookup(hashes)


def ordered_hash(texts: Sequence[str]) -> str:
    """Hash of a text list in its order (all-layer states are stored as one array)."""
    digest = hashlib.sha256()
    for t in texts:
        digest.update(text_hash(t).encode())
    return digest.hexdigest()


def cached_all_layers(
    encoder,
    texts: Sequence[str],
    kind: str = "text",
    cache_dir: Optional[Path] = None,
    show_progress: bool = False,
    only_cached: bool = False,
) -> tuple[np.ndarray, float]:
    """``encoder.encode_all_layers(texts, kind=kind)`` through an on-disk store, and the seconds
    the encoding took (measured when it ran, kept beside the array, so a cost per text can be
    reported from a cached run). Stored as ``<key>.layers.npy`` (float32, ``(L, n, dim)``) and
    ``<key>.layers.json``; the key covers the vector settings, the layer recording and the
    texts in order. Written atomically: a stopped job leaves no half array. ``only_cached``:
    raise :class:`LookupError` instead of encoding what is not stored."""
    import time

    texts = list(texts)
    if cache_dir is None:
        started = time.perf_counter()
        states = encoder.encode_all_layers(texts, kind=kind, show_progress=show_progress)
        return np.asarray(states, dtype=np.float32), time.perf_counter() - started
    settings = {**vector_settings(encoder, kind), "output_layer": "all", "texts": ordered_hash(texts)}
    key = settings_key(settings)
    directory = Path(cache_dir)
    path, meta_path = directory / f"{key}.layers.npy", directory / f"{key}.layers.json"
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return np.load(path), float(meta["seconds"])
    if only_cached:
        raise LookupError(f"no stored {kind} states for these settings in {directory}")
    started = time.perf_counter()
    states = np.asarray(encoder.encode_all_layers(texts, kind=kind, show_progress=show_progress),
                        dtype=np.float32)
    seconds = time.perf_counter() - started
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, lambda handle: np.save(handle, states))
    from tp_rag_eval.common import now_utc, versions

    meta = {"settings": settings, "texts": len(texts), "seconds": seconds,
            "written": now_utc(), "written_by": versions()}
    # Last: the pair counts as stored only once both are there.
    _write_atomically(meta_path, lambda handle: handle.write((json.dumps(meta, indent=1) + "\n").encode()))
    return states, seconds
