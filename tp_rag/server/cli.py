"""Command functions for ``tp-rag serve`` and ``tp-rag embed-corpus``, ready to register on the
main typer app::

    from tp_rag.server.cli import embed_corpus, serve
    app.command("serve")(serve)
    app.command("embed-corpus")(embed_corpus)

Also runnable alone: ``python -m tp_rag.server serve --help``.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from tp_rag.cli_common import (
    BatchSizeOpt, DeviceOpt, DocumentPromptOpt, DtypeOpt, Kind, MaxLengthOpt, ModelOpt,
    OutputLayerOpt, PoolingOpt, PresetOpt, PromptOpt, QueryPromptOpt, TpExitOpt, TpOpt, TpStartOpt,
    TrustIndexModelOpt, encoder_config, quiet_loading, reports_errors,
)

_LIM = "Limits"
_BAT = "Batching"
_RAY = "Ray"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- tp-rag serve -----------------------------------------------------------------------------------
@reports_errors
def serve(
    index: Annotated[Optional[Path], typer.Option(
        "--index", help="Index folder to serve /v1/search over; without encoder options its "
        "own encoder settings are used.", show_default=False)] = None,
    host: Annotated[str, typer.Option(
        "--host", help="Interface to bind; anything but loopback exposes the server.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535,
                                      help="Port to listen on (0: any free port).")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="TP_RAG_API_KEY", show_default=False,
        help="Require 'Authorization: Bearer <key>' on /v1/* (or set TP_RAG_API_KEY).")] = None,
    served_model_name: Annotated[Optional[str], typer.Option(
        "--served-model-name", help="The `model` clients pass (default: the model setting).")] = None,
    input_type: Annotated[Kind, typer.Option(
        "--default-input-type", help="Template when a request has no input_type.")] = Kind.text,
    max_inputs: Annotated[int, typer.Option("--max-inputs", min=1, rich_help_panel=_LIM,
                                            help="Most texts per request.")] = 256,
    max_chars: Annotated[int, typer.Option("--max-chars", min=1, rich_help_panel=_LIM,
                                           help="Most characters per text.")] = 16_384,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1024, rich_help_panel=_LIM,
                                                help="Largest request body.")] = 4 * 1024 * 1024,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, rich_help_panel=_LIM,
                                           help="Texts waiting before requests get 503.")] = 4096,
    retry_after: Annotated[int, typer.Option("--retry-after", min=0, rich_help_panel=_LIM,
                                             help="Seconds a 503 asks clients to wait (the Retry-After header).")] = 1,
    request_timeout: Annotated[float, typer.Option(
        "--request-timeout", min=0, rich_help_panel=_LIM,
        help="Seconds a request may wait for the model before it gets 504 and its work is "
        "dropped (0: no limit).")] = 60.0,
    shutdown_timeout: Annotated[float, typer.Option(
        "--shutdown-timeout", min=0, rich_help_panel=_LIM,
        help="On Ctrl-C/SIGTERM, seconds to finish the requests already accepted.")] = 30.0,
    batching: Annotated[bool, typer.Option("--batching/--no-batching", rich_help_panel=_BAT,
                                           help="Merge concurrent requests into shared model runs.")] = True,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, rich_help_panel=_BAT,
                                           help="Most texts per merged model run.")] = 64,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0, rich_help_panel=_BAT,
                                               help="Longest wait for a batch to fill.")] = 2.0,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    trust_index_model: TrustIndexModelOpt = False,
    preset: PresetOpt = None, model: ModelOpt = None, tp: TpOpt = None, tp_start: TpStartOpt = None,
    tp_exit: TpExitOpt = None, output_layer: OutputLayerOpt = None, pooling: PoolingOpt = None,
    prompt: PromptOpt = None,
    query_prompt: QueryPromptOpt = None, document_prompt: DocumentPromptOpt = None,
    max_length: MaxLengthOpt = None, device: DeviceOpt = None, dtype: DtypeOpt = None,
    batch_size: BatchSizeOpt = None,
) -> None:
    """Serve embeddings over HTTP with the OpenAI API shape (POST /v1/embeddings), plus
    /v1/search over an index folder, /v1/models and /health."""
    from tp_rag.server import ServerSettings, create_app, serve_forever

    settings = ServerSettings(
        host=host, port=port, model_name=served_model_name, api_key=api_key,
        default_input_type=input_type.value, max_inputs=max_inputs, max_chars=max_chars,
        max_body_bytes=max_body_bytes, max_queue_texts=max_queue, batching=batching,
        max_batch_texts=max_batch, max_wait_ms=max_wait_ms, retry_after_s=retry_after,
        request_timeout_s=request_timeout or None, shutdown_timeout_s=shutdown_timeout)
    if not _is_loopback(host) and api_key is None:
        typer.echo(f"warning: serving on {host} without an API key; anyone who can reach this "
                   "port can use it (set --api-key or TP_RAG_API_KEY)", err=True)
    encoder_options = (preset, model, tp, tp_start, tp_exit, output_layer, prompt, query_prompt,
                       document_prompt, max_length)
    runtime = dict(device=device, dtype=dtype.value if dtype else None, batch_size=batch_size)
    quiet_loading()
    own_settings = all(v is None for v in encoder_options) and pooling is None
    config = None if own_settings else encoder_config(*encoder_options, device, dtype, batch_size,
                                                      pooling=pooling)
    loaded_index = None
    if index is not None:
        from tp_rag.index import manifest_config, read_manifest
        from tp_rag.index.compat import EncoderMismatchError, differences
        from tp_rag.index.trust import check_trusted

        built = manifest_config(read_manifest(index))
        if own_settings:  # the manifest's model: only if allowed, checked before anything loads
            check_trusted(built, trust_model=trust_index_model, where=f"the index at {index}")
        elif differences(built, config):
            raise EncoderMismatchError(
                f"the index at {index} was built with different encoder settings "
                f"({'; '.join(differences(built, config))}); leave out the encoder options to "
                "use its own")
        from tp_rag.index import FaissIndex

        loaded_index = FaissIndex.load(index, **runtime, trust_model=trust_index_model)
    text_encoder = None
    if loaded_index is not None and own_settings:
        encoder = loaded_index.encoder
    elif own_settings:  # one model, two presets: retrieval for query/document, STS for text
        from tp_rag.encoder import Encoder
        from tp_rag.presets import DEFAULT_PRESET, RETRIEVAL_PRESET

        encoder = Encoder(encoder_config(*encoder_options, device, dtype, batch_size,
                                         default_preset=RETRIEVAL_PRESET))
        sts = encoder_config(*encoder_options, device, dtype, batch_size, default_preset=DEFAULT_PRESET)
        text_encoder = encoder.replace(**sts.model_dump())
    else:
        from tp_rag.encoder import Encoder

        encoder = Encoder(config)
    app = create_app(encoder, settings, index=loaded_index, text_encoder=text_encoder)
    typer.echo(f"serving {settings.model_name or encoder.config.model} (dim {encoder.dim}) on "
               f"http://{host}:{port}/v1" + (f" with {len(loaded_index)} indexed documents"
                                              if loaded_index is not None else ""), err=True)
    serve_forever(app, host, port, log_level=log_level, shutdown_timeout=shutdown_timeout)


# -- tp-rag embed-corpus ----------------------------------------------------------------------------
@reports_errors
def embed_corpus(
    corpus: Annotated[List[str], typer.Argument(
        help="JSONL or Parquet files, or folders of them (URIs such as s3://... with --ray).",
        show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Shard folder (Parquet: id, text, title, metadata, embedding). "
        "Rerunning skips the documents already there.", show_default=False)],
    index: Annotated[Optional[Path], typer.Option(
        "--index", help="Also build a FAISS index folder from the shards.", show_default=False)] = None,
    index_type: Annotated[str, typer.Option("--index-type", help="flat, ivf, hnsw, ... "
                                            "(as tp-rag index build).")] = "flat",
    use_ray: Annotated[bool, typer.Option(
        "--ray/--no-ray", help="Embed with a Ray Data actor pool (else in this process).")] = False,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="Ray cluster to join (e.g. auto or ray://head:10001); default: a "
        "new local instance.", rich_help_panel=_RAY)] = None,
    actors: Annotated[int, typer.Option("--actors", min=1, rich_help_panel=_RAY,
                                        help="Actors, one encoder each.")] = 1,
    cpus_per_actor: Annotated[float, typer.Option("--cpus-per-actor", min=0, rich_help_panel=_RAY,
                                                  help="CPUs reserved per actor.")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option("--gpus-per-actor", min=0, rich_help_panel=_RAY,
                                                  help="GPUs per actor (use with --device cuda).")] = 0.0,
    rows_per_call: Annotated[int, typer.Option("--rows-per-call", min=1,
                                               help="Documents per encoder call.")] = 64,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1,
                                            help="Documents per shard file.")] = 4096,
    kind: Annotated[Kind, typer.Option("--kind", help="Template to embed with.")] = Kind.document,
    text_field: Annotated[str, typer.Option("--text-field", help="Field holding the text.")] = "text",
    id_field: Annotated[Optional[str], typer.Option(
        "--id-field", help="Id field (default: _id, then id).")] = None,
    title_field: Annotated[str, typer.Option(
        "--title-field", help="Title field, embedded as 'title. text' (empty: none).")] = "title",
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Start the shard folder (and --index) afresh.")] = False,
    preset: PresetOpt = None, model: ModelOpt = None, tp: TpOpt = None, tp_start: TpStartOpt = None,
    tp_exit: TpExitOpt = None, output_layer: OutputLayerOpt = None, pooling: PoolingOpt = None,
    prompt: PromptOpt = None,
    query_prompt: QueryPromptOpt = None, document_prompt: DocumentPromptOpt = None,
    max_length: MaxLengthOpt = None, device: DeviceOpt = None, dtype: DtypeOpt = None,
    batch_size: BatchSizeOpt = None,
) -> None:
    """Embed a corpus into resumable Parquet shards (with --ray: a Ray Data actor pool, locally
    or on a cluster), optionally building a FAISS index folder from them."""
    from tp_rag.distributed import build_index, corpus_paths

    config = encoder_config(preset, model, tp, tp_start, tp_exit, output_layer, prompt,
                             query_prompt, document_prompt, max_length, device, dtype, batch_size,
                             pooling=pooling)
    corpus_paths(corpus)  # fail on a bad path before starting Ray or loading a model
    if index is not None and index.exists() and any(index.iterdir()) and not overwrite:
        raise FileExistsError(f"{index} exists; pass --overwrite to replace it")
    common = dict(kind=kind.value, batch_size=rows_per_call, shard_size=shard_size,
                  text_field=text_field, id_field=id_field, title_field=title_field or None,
                  overwrite=overwrite)
    quiet_loading()
    if use_ray:
        from tp_rag.distributed.ray_embed import embed_corpus as run

        result = run(corpus, output, config, num_actors=actors, num_cpus_per_actor=cpus_per_actor,
                     num_gpus_per_actor=gpus_per_actor, address=ray_address, **common)
    else:
        from tp_rag.distributed.local import embed_corpus_local

        result = embed_corpus_local(corpus, output, config, **common)
    summary = result.as_dict()
    if index is not None:
        built = build_index(output, index, index_type=index_type, overwrite=overwrite)
        summary["index"] = {"path": str(index), "documents": len(built), "type": built.index_type}
    typer.echo(json.dumps(summary, indent=2))


def make_app() -> typer.Typer:
    """A stand-alone typer app with both commands (``python -m tp_rag.server``)."""
    app = typer.Typer(name="tp-rag-server", no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False,
                      context_settings={"help_option_names": ["-h", "--help"]})
    app.command("serve")(serve)
    app.command("embed-corpus")(embed_corpus)
    return app
