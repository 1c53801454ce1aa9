"""What the ``tp-rag`` commands share: encoder options, building the encoder, error reporting.

Used by :mod:`tp_rag.cli` and :mod:`tp_rag.server.cli`, so every command spells its options and
reports failures the same way.
"""

import enum
import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from tp_rag.presets import DEFAULT_PRESET, RETRIEVAL_PRESET, list_presets


class Dtype(str, enum.Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Kind(str, enum.Enum):
    document = "document"
    query = "query"
    text = "text"


# -- shared options -------------------------------------------------------------------------------
_ENC = "Encoder"
_RUN = "Runtime"
PresetOpt = Annotated[Optional[str], typer.Option(
    "--preset", help=f"Named configuration: {', '.join(list_presets())}. Default: "
    f"{RETRIEVAL_PRESET} for retrieval (index, search, serve, query/document embeddings), "
    f"{DEFAULT_PRESET} for sentence similarity (--kind text, tune --pairs); none when --model "
    "is given (plain defaults then).",
    rich_help_panel=_ENC)]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Model: bundled name, local folder, .gguf file or Hugging Face hub id "
    "(overrides the preset's model).", rich_help_panel=_ENC)]
TpOpt = Annotated[Optional[bool], typer.Option(
    "--tp/--no-tp", help="Token Prepending on (default) or off (vanilla prompt embeddings), for "
    "queries and documents alike (a preset may set TP per side).",
    show_default=False, rich_help_panel=_ENC)]
TpStartOpt = Annotated[Optional[int], typer.Option(
    "--tp-start", min=0, help="First decoder layer (0-based) with Token Prepending.",
    rich_help_panel=_ENC)]
TpExitOpt = Annotated[Optional[int], typer.Option(
    "--tp-exit", min=1, help="TP applies before layers tp-start .. tp-exit - 1.",
    rich_help_panel=_ENC)]
OutputLayerOpt = Annotated[Optional[int], typer.Option(
    "--output-layer", help="Hidden state used as the embedding (1..L, or -1 = last).",
    rich_help_panel=_ENC)]


class Pooling(str, enum.Enum):
    last = "last"
    mean = "mean"


PoolingOpt = Annotated[Optional[Pooling], typer.Option(
    "--pooling", help="Embedding from the prompt's last token, or the mean over the text's "
    "tokens (the retrieval preset's choice).", rich_help_panel=_ENC, show_default=False)]
PromptOpt = Annotated[Optional[str], typer.Option(
    "--prompt", help="Prompt family (prompteol, metaeol, pretended_cot, knowledge, passage_eol) "
    "or a template containing {text}.", rich_help_panel=_ENC)]
QueryPromptOpt = Annotated[Optional[str], typer.Option(
    "--query-prompt", help="Prompt family or template for queries (default: --prompt).",
    rich_help_panel=_ENC)]
DocumentPromptOpt = Annotated[Optional[str], typer.Option(
    "--document-prompt", help="Prompt family or template for documents (default: --prompt).",
    rich_help_panel=_ENC)]
MaxLengthOpt = Annotated[Optional[int], typer.Option(
    "--max-length", min=8, help="Maximum tokens per prompt; longer texts are cut.",
    rich_help_panel=_ENC)]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", help="auto, cpu, cuda, cuda:N or mps (default: the configuration's, auto).",
    rich_help_panel=_RUN)]
DtypeOpt = Annotated[Optional[Dtype], typer.Option(
    "--dtype", help="Model precision. auto (default): bfloat16 where the hardware runs it "
    "natively (CUDA with bf16, a CPU with AMX or AVX512-BF16), else float32; --verbose says "
    "which.", rich_help_panel=_RUN)]
BatchSizeOpt = Annotated[Optional[int], typer.Option(
    "--batch-size", "-b", min=1, help="Texts per forward pass (default 16).", rich_help_panel=_RUN)]
TextFieldOpt = Annotated[str, typer.Option(
    "--text-field", help="JSONL field holding the text.")]
IdFieldOpt = Annotated[Optional[str], typer.Option(
    "--id-field", help="JSONL field holding the id (default: _id, then id, else the line).")]
TitleFieldOpt = Annotated[str, typer.Option(
    "--title-field", help="JSONL field holding a title, embedded as 'title. text' (empty: none).")]
ChunkSizeOpt = Annotated[int, typer.Option(
    "--chunk-size", min=1, help="Documents per embedding chunk (one checkpoint file each).")]
SplitWordsOpt = Annotated[Optional[int], typer.Option(
    "--split-words", min=1, help="Instead of token passages: split documents longer than N "
    "words into passages of N words (ids ID#0, ID#1, ...; metadata parent_id and chunk), each "
    "embedded with its title.")]
PassageTokensOpt = Annotated[Optional[int], typer.Option(
    "--passage-tokens", min=8, help="Longest passage in tokens when a document exceeds the "
    "prompt's text budget (default: the whole budget beside the title).")]
PassageOverlapOpt = Annotated[int, typer.Option(
    "--passage-overlap", min=0, help="Tokens consecutive passages share (at most half a passage).")]
NoSplitOpt = Annotated[bool, typer.Option(
    "--no-split", help="Never split: long documents are cut to the prompt's budget.")]
QuerySampleOpt = Annotated[Optional[Path], typer.Option(
    "--query-sample", help="Text file of typical queries, one per line: the query side's "
    "centering mean is fitted on them (default: the documents' mean).")]
NoCenteringOpt = Annotated[bool, typer.Option(
    "--no-centering", help="Store the encoder's vectors as they are (no mean-centering).")]
WorkDirOpt = Annotated[Optional[Path], typer.Option(
    "--work-dir", help="Folder for the embedding checkpoints that let an interrupted run resume "
    "(default: the tp-rag cache folder). Removed after success.")]
NoCheckpointOpt = Annotated[bool, typer.Option(
    "--no-checkpoint", help="Do not checkpoint chunks to disk (no resume).")]
TrustIndexModelOpt = Annotated[bool, typer.Option(
    "--trust-index-model", help="Load the model the index's manifest names even if it is not "
    "the bundled model or in your allow-list (an index folder cannot choose a model otherwise).",
    rich_help_panel=_ENC)]
IndexPresetOpt = Annotated[Optional[str], typer.Option(
    "--preset", help="Use this preset's model and settings; they must match the index's "
    "(settings that change vectors are compared before any model is loaded).",
    rich_help_panel=_ENC)]
IndexModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Use this model (the other settings come from the index); refused "
    "if it is not the model the index was built with.", rich_help_panel=_ENC)]
ProgressOpt = Annotated[Optional[bool], typer.Option(
    "--progress/--no-progress", help="Progress bars on stderr (default: when it is a terminal).",
    show_default=False)]


def encoder_config(preset, model, tp, tp_start, tp_exit, output_layer, prompt, query_prompt,
                   document_prompt, max_length, device, dtype, batch_size, *,
                   default_preset: str = DEFAULT_PRESET, pooling=None):
    """The EncoderConfig the encoder options describe (preset first, then the overrides);
    ``default_preset`` when neither a preset nor a model is named (see
    :func:`tp_rag.presets.default_preset`)."""
    from tp_rag.config import EncoderConfig
    from tp_rag.presets import preset_config

    overrides = {
        "model": model, "token_prepending": tp, "tp_start": tp_start, "tp_exit": tp_exit,
        "output_layer": output_layer, "prompt": prompt, "query_prompt": query_prompt,
        "document_prompt": document_prompt, "max_length": max_length, "device": device,
        "dtype": dtype.value if dtype is not None else None, "batch_size": batch_size,
        "pooling": pooling.value if pooling is not None else None,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if tp is not None:  # --tp/--no-tp means every kind of text, whatever sides the preset sets
        overrides.update(query_token_prepending=None, document_token_prepending=None)
    if preset is None and model is not None:
        return EncoderConfig(**overrides)
    return preset_config(preset or default_preset, **overrides)


def load_index(index_dir, *, preset=None, model=None, trust_model=False, device=None,
               dtype=None, batch_size=None, need_model=True):
    """Load an index folder for a command. ``--preset``/``--model`` choose the model (checked
    against the manifest's settings before anything is loaded); otherwise the manifest's model
    is used only if it is allowed (tp_rag.index.trust). With ``need_model`` the refusal comes
    now, before any documents are read or embedded."""
    from tp_rag.config import EncoderConfig
    from tp_rag.index import FaissIndex, manifest_config, read_manifest
    from tp_rag.index.compat import EncoderMismatchError, differences
    from tp_rag.index.trust import check_trusted
    from tp_rag.presets import preset_config

    built = manifest_config(read_manifest(index_dir))
    chosen = False
    if preset is not None or model is not None:
        if preset is not None:
            wanted = preset_config(preset, **({"model": model} if model is not None else {}))
        else:
            wanted = EncoderConfig(**{**built.model_dump(), "model": model})
        diffs = differences(built, wanted)
        if diffs:
            raise EncoderMismatchError(
                f"the index at {index_dir} was built with different encoder settings "
                f"({'; '.join(diffs)}); leave out --preset/--model to use its own")
        chosen = True
    if need_model:  # before the data files are read: a refusal costs nothing
        check_trusted(built, trust_model=trust_model or chosen, where=f"the index at {index_dir}")
    index = FaissIndex.load(index_dir, device=device, batch_size=batch_size,
                            dtype=dtype.value if dtype is not None else None,
                            trust_model=trust_model or chosen)
    return index


def make_encoder(config):
    from tp_rag.encoder import Encoder

    quiet_loading()
    return Encoder(config)


def quiet_loading() -> None:
    """No model-loading progress bars from transformers when stderr is not a terminal (logs,
    pipes, tests): one error line should stay one line."""
    import sys

    if not sys.stderr.isatty():
        hf_logging = sys.modules.get("transformers.utils.logging")
        if hf_logging is not None:
            hf_logging.disable_progress_bar()
        else:  # transformers reads this when it is imported; importing it here costs ~1 s
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()


# -- error handling -------------------------------------------------------------------------------
def fail(message: str, code: int = 1) -> "typer.Exit":
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(code)


def reports_errors(func):
    """Expected failures become one line on stderr and a non-zero exit status."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from pydantic import ValidationError

        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            raise fail("interrupted (rerun the same command to resume from the finished chunks)",
                       130) from None
        except ValidationError as err:
            from tp_rag.index.storage import one_line

            raise fail(f"invalid settings: {one_line(err)}") from None
        except KeyError as err:
            raise fail(err.args[0] if err.args else "missing key") from None
        except ImportError as err:
            raise fail(f"{err} (this command may need an extra: pip install 'tp-rag[serve]' "
                       "or 'tp-rag[ray]')") from None
        except (ValueError, TypeError, OSError, RuntimeError) as err:
            raise fail(str(err) or type(err).__name__) from None

    return wrapper
