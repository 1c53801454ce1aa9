"""Embedding a corpus in chunks, checkpointed to ``.npy`` files so an interrupted build resumes.

The work folder for one job is ``<checkpoint_dir>/<key>/`` where ``key`` is a sha256 over the
encoder settings that change vectors, the chunk size and every text to embed: the same corpus
with the same encoder finds its finished chunks again, and anything else starts afresh. Chunk
files are written to a temporary name and renamed, so a crash never leaves a half-written chunk
under a final name; a chunk that does not load with the expected shape is embedded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from tp_rag.index.compat import vector_settings

DEFAULT_CHUNK_SIZE = 1024


def default_checkpoint_dir() -> Path:
    from tp_rag.models import cache_dir

    return cache_dir() / "index-chunks"


def job_key(encoder, texts: Sequence[str], chunk_size: int) -> str:
    digest = hashlib.sha256()
    header = {"encoder": vector_settings(encoder.config), "dim": encoder.dim, "chunk": chunk_size}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class ChunkedEmbeddings:
    """Document embeddings of ``texts``, computed chunk by chunk into a work folder.

    ``ensure()`` embeds whatever chunks are missing (with a progress bar); ``chunks()`` then
    yields ``(start, vectors)`` memory-mapped from disk, and ``sample(n)`` draws rows for
    training. ``cleanup()`` removes the folder. With ``checkpoint_dir=None`` a temporary folder
    is used (no resume across processes).
    """

    def __init__(
        self,
        encoder,
        texts: Sequence[str],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        checkpoint_dir: Optional[os.PathLike | str] = None,
        show_progress: Optional[bool] = None,
    ):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.encoder = encoder
        self.texts = texts
        self.chunk_size = chunk_size
        self.show_progress = show_progress
        self.key = job_key(encoder, texts, chunk_size)
        if checkpoint_dir is None:
            self.folder = Path(tempfile.mkdtemp(prefix="tp-rag-chunks-"))
        else:
            self.folder = Path(checkpoint_dir) / self.key[:32]
            self.folder.mkdir(parents=True, exist_ok=True)
        self.reused = 0  # chunks found on disk
        self.embedded = 0  # chunks computed by this object

    @property
    def num_chunks(self) -> int:
        return -(-len(self.texts) // self.chunk_size)

    def _path(self, i: int) -> Path:
        return self.folder / f"chunk-{i:06d}.npy"

    def _bounds(self, i: int) -> tuple[int, int]:
        start = i * self.chunk_size
        return start, min(start + self.chunk_size, len(self.texts))

    def _load(self, i: int, mmap: bool = True) -> Optional[np.ndarray]:
        path = self._path(i)
        if not path.exists():
            return None
        start, stop = self._bounds(i)
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            return None
        if array.dtype != np.float32 or array.shape != (stop - start, self.encoder.dim):
            return None
        return array

    def ensure(self) -> None:
        missing = [i for i in range(self.num_chunks) if self._load(i) is None]
        self.reused = self.num_chunks - len(missing)
        done = len(self.texts) - sum(self._bounds(i)[1] - self._bounds(i)[0] for i in missing)
        (self.folder / "job.json").write_text(json.dumps(
            {"key": self.key, "texts": len(self.texts), "chunk_size": self.chunk_size,
             "encoder": vector_settings(self.encoder.config)}, indent=1))
        disable = None if self.show_progress is None else not self.show_progress
        with tqdm(total=len(self.texts), initial=done, desc="Embedding", unit="doc",
                  disable=disable) as bar:
            for i in missing:
                start, stop = self._bounds(i)
                vectors = self.encoder.encode_documents(
                    list(self.texts[start:stop]), show_progress=False
                )
                self._save(i, np.ascontiguousarray(vectors, dtype=np.float32))
                self.embedded += 1
                bar.update(stop - start)

    def _save(self, i: int, vectors: np.ndarray) -> None:
        final = self._path(i)
        tmp = final.with_name(f"{final.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, vectors, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        for i in range(self.num_chunks):
            array = self._load(i)
            if array is None:
                raise RuntimeError(f"chunk {i} disappeared from {self.folder} during the build")
            yield self._bounds(i)[0], array

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` rows drawn uniformly without replacement (all rows if there are fewer)."""
        total = len(self.texts)
        rows = np.arange(total) if n >= total else np.sort(
            np.random.default_rng(seed).choice(total, size=n, replace=False)
        )
        out = np.empty((len(rows), self.encoder.dim), dtype=np.float32)
        for i in range(self.num_chunks):
            start, stop = self._bounds(i)
            lo, hi = np.searchsorted(rows, [start, stop])
            if hi > lo:
                out[lo:hi] = self._load(i)[rows[lo:hi] - start]
        return out

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
