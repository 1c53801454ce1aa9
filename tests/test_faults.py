"""Crash safety of index folders, proven by breaking things.

- SIGKILL: a forked child process kills itself at each named step of a save (``storage._reached``
  is the hook), for a plain save, ``add`` and ``delete``, and at each chunk of a resumable
  embedding job. Afterwards the folder loads as the old or the new index (old before the
  manifest commit, new from it on), searches equal that index's, and the next successful save
  leaves no debris.
- A full disk (ENOSPC from ``fsync`` or from FAISS) and a read-only folder at every write: the
  save fails with an error saying so, and the folder is exactly as before.
- A reader looping load + search in this process while a child process saves repeatedly never
  fails and always sees one of the two indexes.

The children only write (no model runs in them); vectors are computed before forking.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tp_rag.config import EncoderConfig
from tp_rag.corpus import Document
from tp_rag.index import FaissIndex
from tp_rag.index import storage
from tp_rag.index.chunks import ChunkedEmbeddings
from tp_rag.testing import tiny_encoder

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

TEXTS = ["Paris is the capital of France.", "Cats sleep on the sofa.",
         "Mount Everest is the highest mountain.", "The stock market fell today.",
         "A man plays a guitar.", "Dense vectors for retrieval.", "Dogs run in the park.",
         "Token prepending helps embeddings."]
NEW = ["Kilimanjaro is the highest mountain in Africa.", "Berlin is the capital of Germany."]


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


@pytest.fixture(scope="module")
def queries(encoder):
    return np.random.default_rng(0).standard_normal((4, encoder.dim)).astype(np.float32)


@pytest.fixture(scope="module")
def new_vectors(encoder):
    return encoder.encode_documents(NEW)


def new_docs():
    return [Document(id=f"n{i}", text=t) for i, t in enumerate(NEW)]


def base(encoder) -> FaissIndex:
    return FaissIndex.from_texts(TEXTS, encoder, ids=[f"d{i}" for i in range(len(TEXTS))],
                                 checkpoint_dir=None)


def state(index: FaissIndex, queries) -> tuple:
    """What a reader sees: the ids, and the ranked hits of fixed query vectors."""
    hits = [[(h.id, round(h.score, 5)) for h in row] for row in index.search_vectors(queries, k=5)]
    return sorted(index.ids), hits


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def manifest_names(folder: Path) -> set[str]:
    return {e.name for e in storage.read_manifest(folder).files.values()}


def in_child(work, timeout: float = 60.0) -> int:
    """Run ``work()`` in a forked child; its wait status. 0: returned, 3: raised."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest teardown, whatever happens
        code = 3
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the child process hung")
        time.sleep(0.01)


def kill_at(step: str):
    def hook(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def steps_of(operation, folder: Path, monkeypatch) -> list[str]:
    """The named steps ``operation`` passes through, recorded on a copy of ``folder``."""
    seen: list[str] = []
    with monkeypatch.context() as patch:
        patch.setattr(storage, "_reached", seen.append)
        operation(folder)
    return seen


# -- SIGKILL at every step ---------------------------------------------------------------------------
OPERATIONS = ["save", "add", "delete"]


def make_operation(kind: str, encoder, new_vectors):
    replacement = base(encoder)
    replacement.add_embeddings(new_vectors, new_docs())

    def operation(folder: Path) -> None:
        if kind == "save":  # an index built elsewhere replaces the folder's
            replacement.save(folder)
        elif kind == "add":
            index = FaissIndex.load(folder, encoder)
            index.add_embeddings(new_vectors, new_docs())
            index.save(folder)
        else:
            index = FaissIndex.load(folder, encoder)
            index.delete(["d1", "d5"])
            index.save(folder)
    return operation


@pytest.mark.slow
@pytest.mark.parametrize("kind", OPERATIONS)
def test_sigkill_at_every_step_leaves_old_or_new(kind, encoder, queries, new_vectors, tmp_path,
                                                 monkeypatch):
    operation = make_operation(kind, encoder, new_vectors)
    template = tmp_path / "template"
    base(encoder).save(template)
    old = state(FaissIndex.load(template, encoder), queries)
    rehearsal = tmp_path / "rehearsal"
    subprocess.run(["cp", "-r", str(template), str(rehearsal)], check=True)
    steps = steps_of(operation, rehearsal, monkeypatch)
    new = state(FaissIndex.load(rehearsal, encoder), queries)
    assert new != old
    assert "manifest-committed" in steps and steps[-1] == "cleaned" and len(steps) >= 7

    for n, step in enumerate(steps):
        folder = tmp_path / f"killed-{n}"
        subprocess.run(["cp", "-r", str(template), str(folder)], check=True)
        before = manifest_names(folder)

        def work():
            storage._reached = kill_at(step)
            operation(folder)

        status = in_child(work)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (step, status)
        committed = n >= steps.index("manifest-committed")
        loaded = FaissIndex.load(folder, encoder)
        assert state(loaded, queries) == (new if committed else old), step
        # the next successful save removes every leftover; the generation it replaced stays
        previous = manifest_names(folder)
        assert previous == before or committed
        loaded.save(folder)
        left = names(folder)
        assert not [name for name in left if name.endswith(".tmp")], (step, left)
        assert left == {"manifest.json"} | manifest_names(folder) | previous, (step, left)
        assert state(FaissIndex.load(folder, encoder), queries) == state(loaded, queries)


class HashEncoder:
    """A numpy stand-in for the encoder of an embedding job; dies at its ``die_at``-th call."""

    dim = 8

    def __init__(self, die_at: int | None = None):
        self.config = EncoderConfig(model="hash-test")
        self.calls, self.die_at = 0, die_at

    def encode_documents(self, texts, show_progress=False):
        self.calls += 1
        if self.calls == self.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:32], dtype=np.uint8)[: self.dim]
                for t in texts]
        return np.asarray(rows, dtype=np.float32) / 255.0


@pytest.mark.parametrize("die_at", [1, 2, 4])
def test_sigkill_during_a_resumable_build_resumes(die_at, tmp_path):
    texts = [f"document number {i}" for i in range(9)]  # 5 chunks of 2 (the last of 1)
    expected = HashEncoder().encode_documents(texts)

    def work():
        ChunkedEmbeddings(HashEncoder(die_at), texts, chunk_size=2, checkpoint_dir=tmp_path,
                          show_progress=False).ensure()

    status = in_child(work)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    again = HashEncoder()
    job = ChunkedEmbeddings(again, texts, chunk_size=2, checkpoint_dir=tmp_path, show_progress=False)
    job.ensure()
    assert job.reused == die_at - 1 and again.calls == job.num_chunks - (die_at - 1)
    np.testing.assert_array_equal(np.concatenate([v for _, v in job.chunks()]), expected)
    job.cleanup()


# -- full disk and read-only folder -----------------------------------------------------------------
def test_full_disk_at_every_write_leaves_the_folder_unchanged(encoder, queries, new_vectors,
                                                              tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    base(encoder).save(folder)
    old, listing = state(FaissIndex.load(folder, encoder), queries), names(folder)
    bigger = FaissIndex.load(folder, encoder)
    bigger.add_embeddings(new_vectors, new_docs())
    real_fsync = os.fsync
    failures = 0
    for n in range(1, 20):
        calls = {"n": 0}

        def fsync(fd):
            calls["n"] += 1
            if calls["n"] == n:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_fsync(fd)

        monkeypatch.setattr(storage.os, "fsync", fsync)
        try:
            bigger.save(folder)
        except OSError as err:
            failures += 1
            assert err.errno == errno.ENOSPC and "the disk is full" in str(err)
            assert "unchanged" in str(err)
            assert names(folder) == listing, n
            assert state(FaissIndex.load(folder, encoder), queries) == old
        else:
            break
        finally:
            monkeypatch.setattr(storage.os, "fsync", real_fsync)
    assert failures >= 3  # the FAISS file, the documents file and the manifest
    assert "n0" in FaissIndex.load(folder, encoder)


def test_full_disk_inside_faiss_is_an_oserror(encoder, tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    index = base(encoder)
    index.save(folder)
    listing = names(folder)

    def full(index, name):
        Path(name).write_bytes(b"partial")
        raise RuntimeError("Error in faiss::FileIOWriter: Error: 'ret == 1' failed: "
                           "write error: No space left on device")

    monkeypatch.setattr(storage.faiss, "write_index", full)
    with pytest.raises(OSError, match="FAISS could not write .*No space left on device"):
        index.save(folder)
    assert names(folder) == listing


def test_read_only_folder(encoder, queries, tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    index = base(encoder)
    index.save(folder)
    old, listing = state(FaissIndex.load(folder, encoder), queries), names(folder)
    index.delete(["d0"])
    real_open = open

    def read_only_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and Path(file).parent == folder:
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(storage, "open", read_only_open, raising=False)
    with pytest.raises(OSError, match="the folder is not writable"):
        index.save(folder)
    monkeypatch.undo()
    assert names(folder) == listing
    loaded = FaissIndex.load(folder, encoder)  # reading a read-only folder works
    assert state(loaded, queries) == old


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders; the simulated test covers it")
def test_read_only_folder_for_real(encoder, queries, tmp_path):
    folder = tmp_path / "idx"
    index = base(encoder)
    index.save(folder)
    old = state(FaissIndex.load(folder, encoder), queries)
    index.delete(["d0"])
    folder.chmod(0o555)
    try:
        with pytest.raises(OSError, match="not writable"):
            index.save(folder)
        assert state(FaissIndex.load(folder, encoder), queries) == old
    finally:
        folder.chmod(0o755)


# -- a reader during repeated saves ------------------------------------------------------------------
@pytest.mark.slow
def test_reader_loops_while_another_process_saves(encoder, queries, new_vectors, tmp_path):
    folder = tmp_path / "idx"
    first = base(encoder)
    second = base(encoder)
    second.add_embeddings(new_vectors, new_docs())
    second.delete(["d2"])
    first.save(folder)
    allowed = {json.dumps(state(first, queries)), json.dumps(state(second, queries))}
    saves = 60

    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            for i in range(saves):
                (second if i % 2 == 0 else first).save(folder)
            code = 0
        finally:
            os._exit(code)
    loads, seen = 0, set()
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            loaded = FaissIndex.load(folder, encoder)  # must never miss a file or fail a check
            seen.add(json.dumps(state(loaded, queries)))
            loads += 1
            if done:
                break
    finally:
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert seen <= allowed and loads >= 3
    assert not [n for n in names(folder) if n.endswith(".tmp")]
