"""The ``tp-rag`` command line: embed texts, build/update FAISS indexes, search them.

Errors are reported as one ``error: ...`` line on stderr with exit status 1 (2 for bad usage,
130 when interrupted); there are no tracebacks for expected failures.
"""

import enum
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Iterator, List, Optional

import typer

from tp_rag import hybrid
from tp_rag.cli_common import (
    BatchSizeOpt, ChunkSizeOpt, DeviceOpt, DocumentPromptOpt, DtypeOpt, IdFieldOpt,
    IndexModelOpt, IndexPresetOpt, Kind, MaxLengthOpt, ModelOpt, NoCenteringOpt, NoCheckpointOpt,
    NoSplitOpt, OutputLayerOpt, PoolingOpt, PassageOverlapOpt, PassageTokensOpt, PresetOpt, ProgressOpt,
    PromptOpt, QueryPromptOpt, QuerySampleOpt, SplitWordsOpt, TextFieldOpt, TitleFieldOpt,
    TpExitOpt, TpOpt, TpStartOpt, TrustIndexModelOpt, WorkDirOpt,
    encoder_config, fail, load_index, make_encoder, quiet_loading, reports_errors,
)
from tp_rag.passages import DEFAULT_OVERLAP, PassageSettings
from tp_rag.presets import RETRIEVAL_PRESET, default_preset
from tp_rag.server.cli import embed_corpus, serve

app = typer.Typer(
    name="tp-rag",
    help="Sentence and passage embeddings from decoder-only LLMs with Token Prepending, "
    "and FAISS indexes over them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
index_app = typer.Typer(
    help="Build and update FAISS index folders.", no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(index_app, name="index")


# -- embed ----------------------------------------------------------------------------------------
@app.command()
@reports_errors
def embed(
    texts: Annotated[Optional[List[str]], typer.Argument(
        help="Texts to embed (or use --input).", show_default=False)] = None,
    input: Annotated[Optional[Path], typer.Option(
        "--input", "-i", help="File or folder of texts: .txt (one per line), .jsonl (BEIR or "
        "--text-field), or a folder of .txt/.md files.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write to .npy (float32 matrix, input order) or .jsonl "
        "({id, embedding} per line). Default: JSONL on stdout.")] = None,
    kind: Annotated[Kind, typer.Option(
        "--kind", help="Template to use: document (passages), query, or text.")] = Kind.document,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = None,
    title_field: TitleFieldOpt = "title",
    chunk_size: Annotated[int, typer.Option(
        "--chunk-size", min=1, help="Texts embedded and written at a time (bounds memory).")] = 256,
    progress: ProgressOpt = None,
    preset: PresetOpt = None, model: ModelOpt = None, tp: TpOpt = None,
    tp_start: TpStartOpt = None, tp_exit: TpExitOpt = None, output_layer: OutputLayerOpt = None,
    pooling: PoolingOpt = None, prompt: PromptOpt = None, query_prompt: QueryPromptOpt = None,
    document_prompt: DocumentPromptOpt = None, max_length: MaxLengthOpt = None,
    device: DeviceOpt = None, dtype: DtypeOpt = None, batch_size: BatchSizeOpt = None,
):
    """Embed texts and write the vectors (.npy or JSONL).

    Example: tp-rag embed -i corpus.jsonl -o vectors.npy
    """
    from tp_rag.corpus import documents_from_texts, read_documents

    if bool(texts) == (input is not None):
        raise fail("give texts as arguments or --input FILE (one of them)", 2)
    if output is not None and output.suffix.lower() not in (".npy", ".jsonl"):
        raise fail(f"--output must end in .npy or .jsonl, got {output.name}", 2)
    if input is not None:
        docs = list(read_documents(input, text_field=text_field, id_field=id_field,
                                   title_field=title_field or None))
    else:
        docs = documents_from_texts(texts, ids=[str(i) for i in range(len(texts))])
    if not docs:
        raise fail("there is nothing to embed (no texts found)")
    items = [d.embedding_text if kind is Kind.document else d.text for d in docs]
    for doc, text in zip(docs, items):
        if not text.strip():
            raise fail(f"text {doc.id!r} is empty; there is nothing to embed")
    config = encoder_config(preset, model, tp, tp_start, tp_exit, output_layer, prompt,
                            query_prompt, document_prompt, max_length, device, dtype, batch_size,
                            default_preset=default_preset(kind.value), pooling=pooling)
    encoder = make_encoder(config)
    chunks = _embed_chunks(encoder, items, kind.value, chunk_size, progress)
    if output is None:
        for start, vectors in chunks:
            for doc, vector in zip(docs[start:start + len(vectors)], vectors):
                typer.echo(json.dumps({"id": doc.id, "embedding": vector.tolist()}))
        return
    with _atomic_output(output) as tmp:
        if output.suffix.lower() == ".npy":
            import numpy as np

            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                               shape=(len(items), encoder.dim))
            for start, vectors in chunks:
                matrix[start:start + len(vectors)] = vectors
            matrix.flush()
            del matrix
        else:
            with open(tmp, "w", encoding="utf-8") as handle:
                for start, vectors in chunks:
                    for doc, vector in zip(docs[start:start + len(vectors)], vectors):
                        handle.write(json.dumps({"id": doc.id, "embedding": vector.tolist()}) + "\n")
    typer.echo(f"Wrote {len(items)} embeddings of dimension {encoder.dim} to {output}", err=True)


def _embed_chunks(encoder, items, kind, chunk_size, progress) -> Iterator:
    from tqdm.auto import tqdm

    disable = None if progress is None else not progress
    with tqdm(total=len(items), desc="Embedding", unit="text", disable=disable) as bar:
        for start in range(0, len(items), chunk_size):
            batch = items[start:start + chunk_size]
            yield start, encoder.encode(batch, kind=kind, show_progress=False)
            bar.update(len(batch))


class _atomic_output:
    """Write to a temporary file beside ``path``; rename over it only on success."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                        dir=self.path.parent)
        os.close(fd)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            Path(self.tmp).unlink(missing_ok=True)
        return False


# -- index build / add / delete -------------------------------------------------------------------
def _checkpoint_dir(work_dir, no_checkpoint):
    if no_checkpoint:
        return None
    return work_dir if work_dir is not None else "auto"


@index_app.command("build")
@reports_errors
def index_build(
    corpus: Annotated[Path, typer.Argument(
        help="BEIR corpus.jsonl, a JSONL with a text field, a folder of .txt/.md files, or a "
        "text file with one passage per line.", show_default=False)],
    index_dir: Annotated[Path, typer.Argument(help="Index folder to create.", show_default=False)],
    index_type: Annotated[str, typer.Option(
        "--index-type", "-t", help="flat (exact; default), hnsw, ivfpq (large corpora), or a "
        "FAISS factory string such as 'HNSW16,Flat' or 'IVF1024,PQ32'.")] = "flat",
    nprobe: Annotated[Optional[int], typer.Option(
        "--nprobe", min=1, help="IVF lists searched per query (IVF indexes; default 16).")] = None,
    ef_search: Annotated[Optional[int], typer.Option(
        "--ef-search", min=1, help="HNSW search breadth (HNSW indexes; default 128).")] = None,
    train_size: Annotated[int, typer.Option(
        "--train-size", min=1, help="Vectors sampled to train IVF/PQ indexes.")] = 100_000,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing index folder (atomically).")] = False,
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = None,
    title_field: TitleFieldOpt = "title",
    passage_tokens: PassageTokensOpt = None,
    passage_overlap: PassageOverlapOpt = DEFAULT_OVERLAP,
    no_split: NoSplitOpt = False,
    split_words: SplitWordsOpt = None,
    query_sample: QuerySampleOpt = None,
    no_centering: NoCenteringOpt = False,
    chunk_size: ChunkSizeOpt = 1024,
    work_dir: WorkDirOpt = None,
    no_checkpoint: NoCheckpointOpt = False,
    progress: ProgressOpt = None,
    preset: PresetOpt = None, model: ModelOpt = None, tp: TpOpt = None,
    tp_start: TpStartOpt = None, tp_exit: TpExitOpt = None, output_layer: OutputLayerOpt = None,
    pooling: PoolingOpt = None, prompt: PromptOpt = None, query_prompt: QueryPromptOpt = None,
    document_prompt: DocumentPromptOpt = None, max_length: MaxLengthOpt = None,
    device: DeviceOpt = None, dtype: DtypeOpt = None, batch_size: BatchSizeOpt = None,
):
    """Embed a corpus and save a FAISS index folder.

    By default (the retrieval preset): documents longer than the prompt's text budget are
    split into overlapping token passages, vectors are mean-centered (statistics saved in the
    folder), and the BM25 index is saved beside them.

    Example: tp-rag index build examples/data/corpus.jsonl my-index --index-type hnsw
    """
    from tp_rag.corpus import read_documents, split_documents
    from tp_rag.index import FaissIndex, check_documents
    from tp_rag.index.storage import MANIFEST

    if (index_dir / MANIFEST).exists() and not overwrite:
        raise fail(f"{index_dir} already holds an index; use --overwrite to replace it or "
                   "'tp-rag index add' to add documents")
    docs = read_documents(corpus, text_field=text_field, id_field=id_field, title_field=title_field or None)
    if split_words and (no_split or passage_tokens is not None):
        raise fail("--split-words replaces token passages; do not combine it with "
                   "--passage-tokens or --no-split", 2)
    docs = check_documents(split_documents(docs, split_words) if split_words else docs)
    if not docs:
        raise fail(f"the corpus is empty: {corpus} holds no documents")
    passages = None if (no_split or split_words) else PassageSettings(passage_tokens, passage_overlap)
    sample = _read_lines(query_sample) if query_sample is not None else None
    config = encoder_config(preset, model, tp, tp_start, tp_exit, output_layer, prompt,
                            query_prompt, document_prompt, max_length, device, dtype, batch_size,
                            default_preset=RETRIEVAL_PRESET, pooling=pooling)
    index = FaissIndex.build(
        docs, make_encoder(config), index_type, nprobe=nprobe, ef_search=ef_search,
        train_size=train_size, chunk_size=chunk_size,
        checkpoint_dir=_checkpoint_dir(work_dir, no_checkpoint), show_progress=progress,
        passages=passages, centering=not no_centering, query_sample=sample,
    )
    index.save(index_dir)
    split = (f" as {len(index)} vectors (long documents split into passages)"
             if len(index) != index.document_count else "")
    typer.echo(f"Indexed {index.document_count} documents{split} ({index.factory}, dimension "
               f"{index.dim}{', centered' if index.centering else ''}) into {index_dir}", err=True)


def _read_lines(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise fail(f"{path} holds no lines")
    return lines


@index_app.command("add")
@reports_errors
def index_add(
    index_dir: Annotated[Path, typer.Argument(help="Existing index folder.", show_default=False)],
    corpus: Annotated[Path, typer.Argument(
        help="Documents to add (same formats as 'index build'); ids must be new.",
        show_default=False)],
    text_field: TextFieldOpt = "text",
    id_field: IdFieldOpt = None,
    title_field: TitleFieldOpt = "title",
    split_words: SplitWordsOpt = None,
    chunk_size: ChunkSizeOpt = 1024,
    work_dir: WorkDirOpt = None,
    no_checkpoint: NoCheckpointOpt = False,
    progress: ProgressOpt = None,
    preset: IndexPresetOpt = None, model: IndexModelOpt = None,
    trust_index_model: TrustIndexModelOpt = False,
    device: DeviceOpt = None, dtype: DtypeOpt = None, batch_size: BatchSizeOpt = None,
):
    """Embed more documents into an index folder (encoder settings come from its manifest;
    its model is used if it is the bundled one or allowed, see --trust-index-model).

    Example: tp-rag index add my-index more.jsonl
    """
    from tp_rag.corpus import read_documents, split_documents
    from tp_rag.index import check_documents

    quiet_loading()
    index = load_index(index_dir, preset=preset, model=model, trust_model=trust_index_model,
                       device=device, dtype=dtype, batch_size=batch_size)
    docs = read_documents(corpus, text_field=text_field, id_field=id_field, title_field=title_field or None)
    docs = check_documents(split_documents(docs, split_words) if split_words else docs,
                           existing=set(index.ids))
    if split_words:
        index.passage_settings = None  # word passages instead of the index's token passages
    added = index.add_documents(docs, chunk_size=chunk_size,
                                checkpoint_dir=_checkpoint_dir(work_dir, no_checkpoint),
                                show_progress=progress)
    if not added:
        raise fail(f"{corpus} holds no documents")
    index.save(index_dir)
    typer.echo(f"Added {len(added)} documents to {index_dir} ({index.document_count} in all)", err=True)


@index_app.command("refit")
@reports_errors
def index_refit(
    index_dir: Annotated[Path, typer.Argument(help="Existing index folder.", show_default=False)],
    query_sample: QuerySampleOpt = None,
    trust_index_model: TrustIndexModelOpt = False,
    device: DeviceOpt = None, dtype: DtypeOpt = None, batch_size: BatchSizeOpt = None,
):
    """Refit the centering statistics on the documents now in the index (after many adds or
    deletes, or with a new query sample); no document is re-embedded.

    Example: tp-rag index refit my-index --query-sample queries.txt
    """
    quiet_loading()
    index = load_index(index_dir, trust_model=trust_index_model, device=device, dtype=dtype,
                       batch_size=batch_size, need_model=query_sample is not None)
    fitted = index.fit_centering(_read_lines(query_sample) if query_sample is not None else None)
    index.save(index_dir)
    typer.echo(f"Refitted centering on {fitted.documents} vectors"
               + (f" and {fitted.queries} sample queries" if fitted.queries else "")
               + f" in {index_dir}", err=True)


@index_app.command("delete")
@reports_errors
def index_delete(
    index_dir: Annotated[Path, typer.Argument(help="Existing index folder.", show_default=False)],
    ids: Annotated[List[str], typer.Argument(help="Document ids to remove.", show_default=False)],
    missing_ok: Annotated[bool, typer.Option(
        "--missing-ok", help="Ignore ids that are not in the index.")] = False,
):
    """Remove documents by id (no model is loaded).

    Example: tp-rag index delete my-index doc-17 doc-18
    """
    from tp_rag.index import FaissIndex

    index = FaissIndex.load(index_dir)
    removed = index.delete(ids, missing_ok=missing_ok)
    index.save(index_dir)
    typer.echo(f"Removed {removed} documents from {index_dir} ({len(index)} left)", err=True)


# -- search ---------------------------------------------------------------------------------------
class SearchMode(str, enum.Enum):
    dense = "dense"
    bm25 = "bm25"
    hybrid = "hybrid"


class Fusion(str, enum.Enum):
    rrf = "rrf"
    weighted = "weighted"


@app.command()
@reports_errors
def search(
    index_dir: Annotated[Path, typer.Argument(help="Index folder.", show_default=False)],
    queries: Annotated[Optional[List[str]], typer.Argument(
        help="One or more queries.", show_default=False)] = None,
    queries_file: Annotated[Optional[Path], typer.Option(
        "--queries-file", "-q", help="Text file with one query per line.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Results per query.")] = 10,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print JSON (one object per query, one per line) instead of a table.")] = False,
    nprobe: Annotated[Optional[int], typer.Option(
        "--nprobe", min=1, help="IVF lists to search (IVF indexes only).")] = None,
    ef_search: Annotated[Optional[int], typer.Option(
        "--ef-search", min=1, help="HNSW search breadth (HNSW indexes only).")] = None,
    width: Annotated[Optional[int], typer.Option(
        "--width", min=40, help="Table width (default: the terminal's).")] = None,
    mode: Annotated[SearchMode, typer.Option(
        "--mode", help="hybrid: embeddings and keywords fused (the best measured setting); "
        "dense: embeddings only; bm25: keywords only (no model is loaded; documents sharing "
        "no word with the query are left out).",
        case_sensitive=False)] = SearchMode(hybrid.DEFAULT_MODE),
    fusion: Annotated[Fusion, typer.Option(
        "--fusion", help="How --mode hybrid combines the two lists: rrf (reciprocal rank "
        "fusion, sum of 1/(rrf-k + rank)) or weighted (alpha * dense + (1 - alpha) * bm25 "
        "after min-max normalising each list).", case_sensitive=False)] = Fusion(hybrid.DEFAULT_FUSION),
    alpha: Annotated[float, typer.Option(
        "--alpha", min=0.0, max=1.0, help="Weight of the dense side in --fusion weighted "
        "(1: dense only, 0: BM25 only).")] = hybrid.DEFAULT_ALPHA,
    rrf_k: Annotated[int, typer.Option(
        "--rrf-k", min=1, help="The constant k of reciprocal rank fusion.")] = hybrid.DEFAULT_RRF_K,
    candidates: Annotated[Optional[int], typer.Option(
        "--candidates", min=1, help="Candidates each side contributes to a hybrid search "
        "(default: max(top-k, 100)).")] = None,
    passages: Annotated[bool, typer.Option(
        "--passages", help="Return stored passages, not documents (by default each document "
        "appears once, at its best passage, which is the text shown).")] = False,
    preset: IndexPresetOpt = None, model: IndexModelOpt = None,
    trust_index_model: TrustIndexModelOpt = False,
    device: DeviceOpt = None, dtype: DtypeOpt = None, batch_size: BatchSizeOpt = None,
):
    """Search an index folder; the encoder is rebuilt from the index's manifest (its model
    is used if it is the bundled one or allowed, see --trust-index-model).

    Example: tp-rag search my-index "highest mountain in the world" -k 3 --mode dense

    With --json, each hit's "score" is the fused score in hybrid mode, and "scores" holds the
    dense and BM25 ranks and scores it came from.
    """
    quiet_loading()
    items = list(queries or [])
    if queries_file is not None:
        items += [line.strip() for line in queries_file.read_text(encoding="utf-8").splitlines()
                  if line.strip()]
    if not items:
        raise fail("give at least one query (arguments or --queries-file)", 2)
    for i, query in enumerate(items):
        if not query.strip():
            raise fail(f"query {i} is empty; there is nothing to search for")
    index = load_index(index_dir, preset=preset, model=model, trust_model=trust_index_model,
                       device=device, dtype=dtype, batch_size=batch_size,
                       need_model=mode is not SearchMode.bm25)
    if nprobe is not None or ef_search is not None:
        index.set_search_params(nprobe=nprobe, ef_search=ef_search)
    results = index.search_batch(items, k=top_k, mode=mode.value, fusion=fusion.value,
                                 alpha=alpha, rrf_k=rrf_k, candidates=candidates,
                                 passages=passages)
    settings = _search_settings(mode.value, fusion.value, alpha, rrf_k)
    if as_json:
        for query, hits in zip(items, results):
            typer.echo(json.dumps({"query": query, **settings,
                                   "results": [h.to_dict() for h in hits]}, ensure_ascii=False))
        return
    total = width or shutil.get_terminal_size((100, 24)).columns
    label = ", ".join(f"{k} {v}" for k, v in settings.items())
    precision = 4 if settings.get("fusion") == "rrf" else 3  # RRF scores are about 1/60
    empty = None
    if mode is SearchMode.bm25 and len(index):
        empty = "(no results: no document shares a keyword with the query; stop words are ignored)"
    for n, (query, hits) in enumerate(zip(items, results)):
        if n:
            typer.echo("")
        typer.echo(format_table(query, hits, total, label=label, precision=precision, empty=empty))


def _search_settings(mode: str, fusion: str, alpha: float, rrf_k: int) -> dict:
    """What a non-dense search used, for the output (empty for dense: output as before)."""
    if mode == "dense":
        return {}
    if mode == "bm25":
        return {"mode": mode}
    if fusion == "rrf":
        return {"mode": mode, "fusion": fusion, "rrf_k": rrf_k}
    return {"mode": mode, "fusion": fusion, "alpha": alpha}


def format_table(query: str, hits, width: int = 100, *, label: str = "", precision: int = 3,
                 empty: Optional[str] = None) -> str:
    """A plain-text table: rank, score, id, and the (title and) text cut to ``width``.
    ``label`` (e.g. the search mode) follows the query in brackets; ``empty`` replaces the
    no-results line."""
    id_width = min(max([len(h.id) for h in hits] + [2]), 30)
    head = f"{'#':>3}  {'score':>6}  {'id':<{id_width}}  "
    room = max(width - len(head), 20)
    lines = [f"query: {query}" + (f"  [{label}]" if label else ""), head + "text",
             "-" * min(width, len(head) + room)]
    for hit in hits:
        title = hit.metadata.get("title")
        text = f"{title}: {hit.text}" if isinstance(title, str) and title else hit.text
        text = " ".join(text.split())
        if len(text) > room:
            text = text[: room - 3] + "..."
        doc_id = hit.id if len(hit.id) <= id_width else hit.id[: id_width - 3] + "..."
        lines.append(f"{hit.rank:>3}  {hit.score:>6.{precision}f}  {doc_id:<{id_width}}  {text}")
    if not hits:
        lines.append(empty or "(no results: the index is empty)")
    return "\n".join(lines)


# -- tune -----------------------------------------------------------------------------------------
def _parse_exits(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.replace(" ", "").split(",") if v})
    except ValueError:
        raise fail(f"--tp-exits must be comma-separated integers, got {text!r}", 2) from None
    return values


@app.command()
@reports_errors
def tune(
    pairs: Annotated[Optional[Path], typer.Option(
        "--pairs", help="STS-style dev set: JSONL (sentence1, sentence2, score), a 3-column TSV, "
        "or an STS Benchmark CSV.")] = None,
    beir: Annotated[Optional[Path], typer.Option(
        "--beir", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv).")] = None,
    split: Annotated[str, typer.Option(
        "--split", help="qrels split of the BEIR folder to tune on (never the test split you "
        "report).")] = "dev",
    max_docs: Annotated[Optional[int], typer.Option(
        "--max-docs", min=1, help="BEIR: keep the judged documents plus random others up to "
        "this many (seeded), to bound the cost.")] = None,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", min=3, help="Pairs: use only the first N pairs.")] = None,
    tp_exits: Annotated[str, typer.Option(
        "--tp-exits", help="Comma-separated tp_exit values to try (each costs one pass; values "
        "beyond the model's depth are dropped).")] = "2,3,4,5,6,7,8,10,12",
    vanilla: Annotated[bool, typer.Option(
        "--vanilla/--no-vanilla", help="Also score the prompt without TP.")] = True,
    save_preset: Annotated[Optional[str], typer.Option(
        "--save-preset", help="Save the best settings under this preset name (user presets "
        "file: $TP_RAG_PRESETS or ~/.config/tp-rag/presets.json).")] = None,
    heatmap: Annotated[Path, typer.Option(
        "--heatmap", help="Where to write the heat-map PNG.")] = Path("tp-rag-tune.png"),
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", help="Also write the whole grid as JSON here.")] = None,
    progress: ProgressOpt = None,
    preset: PresetOpt = None, model: ModelOpt = None, tp_start: TpStartOpt = None,
    prompt: PromptOpt = None, query_prompt: QueryPromptOpt = None,
    document_prompt: DocumentPromptOpt = None, max_length: MaxLengthOpt = None,
    device: DeviceOpt = None, dtype: DtypeOpt = None, batch_size: BatchSizeOpt = None,
):
    """Choose the TP range and output layer for a model on your dev set.

    One pass per tp_exit value (plus one without TP) scores every output layer at once.
    Example: tp-rag tune --model Qwen/Qwen2.5-0.5B --pairs dev.tsv --save-preset qwen-small
    """
    from tp_rag.presets import save_preset as save
    from tp_rag.tuning import PairsDevSet, read_beir, read_pairs, sweep

    if (pairs is None) == (beir is None):
        raise fail("give one dev set: --pairs FILE or --beir FOLDER", 2)
    if pairs is not None:
        devset = read_pairs(pairs)
        if limit:
            devset = PairsDevSet(devset.sent1[:limit], devset.sent2[:limit], devset.gold[:limit])
    else:
        devset = read_beir(beir, split, max_docs=max_docs)
    # The sweep sets TP per row; the base encoder runs without it, so any depth is fine.
    config = encoder_config(preset, model, False, tp_start, None, None, prompt, query_prompt,
                            document_prompt, max_length, device, dtype, batch_size,
                            default_preset=default_preset("text" if pairs is not None else "retrieval"))
    encoder = make_encoder(config)
    start = config.tp_start
    exits = [e for e in _parse_exits(tp_exits) if start < e <= encoder.num_layers]
    show = progress if progress is not None else None
    result = sweep(encoder, devset, exits, tp_start=start, include_vanilla=vanilla,
                   show_progress=bool(show))
    typer.echo(result.markdown())
    best = result.best()
    metric = result.metric
    typer.echo("")
    if vanilla:
        base = result.best(token_prepending=False)
        typer.echo(f"best without TP: output layer {base['output_layer']}, {metric} {base[metric]:.2f}")
    typer.echo(f"best: {result.label(best)}, output layer {best['output_layer']}, {metric} {best[metric]:.2f}")
    result.heatmap(heatmap, title=f"{config.model}: {metric} on {pairs or beir}")
    typer.echo(f"heat-map: {heatmap}", err=True)
    if json_out is not None:
        json_out.write_text(json.dumps({"config": config.model_dump(), **result.to_dict()}, indent=2))
    if save_preset:
        chosen = {k: v for k, v in best.items() if k != metric}
        if Path(config.model).expanduser().exists():  # a local model: keep it findable anywhere
            chosen["model"] = str(Path(config.model).expanduser().resolve())
        path = save(save_preset, config.model_copy(update=chosen))
        typer.echo(f"saved preset {save_preset!r} in {path}; use it with --preset {save_preset} "
                   f"or Encoder.from_preset({save_preset!r})")


# -- info -----------------------------------------------------------------------------------------
@app.command()
@reports_errors
def info(
    index_dir: Annotated[Path, typer.Argument(help="Index folder.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Also check the data files' sizes and sha256 checksums.")] = False,
):
    """Show what an index folder holds (no model is loaded).

    Example: tp-rag info my-index --verify
    """
    from tp_rag.index.storage import read_manifest, verify_file

    manifest = read_manifest(index_dir)
    if verify:
        for entry in manifest.files.values():
            verify_file(index_dir, entry)
    if as_json:
        typer.echo(json.dumps(manifest.model_dump(mode="json"), indent=2))
        return
    enc = manifest.encoder
    sides = {side: enc.get(f"{side}_token_prepending") for side in ("query", "document")}
    sides = {side: enc.get("token_prepending", True) if on is None else on for side, on in sides.items()}
    tp = (f"layers {enc.get('tp_start')}..{enc.get('tp_exit')}" if any(sides.values()) else "off")
    if any(sides.values()) and not all(sides.values()):
        tp += " (" + ("documents" if sides["document"] else "queries") + " only)"
    params = ", ".join(f"{k}={v}" for k, v in manifest.search_params.items() if v is not None)
    prompts = enc.get("prompt")
    if enc.get("query_prompt") or enc.get("document_prompt"):
        prompts = (f"{prompts} (queries: {enc.get('query_prompt') or prompts}; documents: "
                   f"{enc.get('document_prompt') or prompts})")
    rows = [
        ("index", str(index_dir)),
        ("documents", _documents_row(manifest)),
        ("centering", _centering_row(manifest)),
        ("index type", f"{manifest.index_type} ({manifest.factory})" + (f", {params}" if params else "")),
        ("dimension", f"{manifest.dim}, {'L2-normalised (cosine scores)' if manifest.normalize else 'not normalised (inner product)'}"),
        ("model", str(enc.get("model")) + (f" (preset {manifest.preset})" if manifest.preset else "")),
        ("model trust", _trust_row(enc.get("model"))),
        ("prompt", str(prompts)),
        ("token prepending", tp),
        ("output layer", str(enc.get("output_layer"))),
        ("pooling", {"mean": "mean over the text's tokens"}.get(enc.get("pooling"), "last token")),
        ("max length", str(enc.get("max_length"))),
        ("dtype", _dtype_row(enc)),
        ("built with", f"tp-rag {manifest.tp_rag_version}, faiss {manifest.faiss_version}, "
                       f"{manifest.created_at}"),
    ]
    for key in ("faiss", "docs", "centering", "bm25"):
        entry = manifest.files.get(key)
        if entry is None:
            continue
        rows.append((f"{key} file", f"{entry.name} ({_size(entry.bytes)}, sha256 "
                                    f"{entry.sha256[:12]}...)" + (" verified" if verify else "")))
    label = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{label}}  {value}")


def _dtype_row(enc: dict) -> str:
    """The manifest's dtype; for ``auto``, what it resolves to on this machine and why (the
    index is usable on any machine: dtype does not change which vector space it is)."""
    dtype = str(enc.get("dtype", "float32"))
    if dtype != "auto":
        return dtype
    from tp_rag.models import resolve_device, resolve_dtype

    choice = resolve_dtype("auto", resolve_device(enc.get("device") or "auto"))
    return f"auto, here {choice.name} ({choice.reason.removeprefix('auto: ')})"


def _documents_row(manifest) -> str:
    extras = manifest.model_extra or {}
    documents = extras.get("documents", manifest.count)
    row = str(documents)
    if documents != manifest.count:
        row += f" ({manifest.count} vectors: long documents as passages)"
    passages = extras.get("passages")
    if passages:
        size = passages.get("passage_tokens") or "the prompt's budget"
        row += f"; split at {size} tokens, overlap {passages.get('overlap')}"
    elif "passages" in extras:
        row += "; not split"
    return row


def _centering_row(manifest) -> str:
    described = (manifest.model_extra or {}).get("centering")
    if "centering" in manifest.files and isinstance(described, dict):
        source = described.get("query_source")
        queries = {"query-sample": f"queries: mean of {described.get('queries')} sample queries",
                   "titles": f"queries: mean of {described.get('queries')} corpus titles embedded as queries",
                   }.get(source, "queries: the documents' mean")
        return f"mean-centered (documents: mean of {described.get('documents')} vectors; {queries})"
    if isinstance(described, dict) and described.get("enabled"):
        return "on, not fitted yet (too few documents)"
    return "off"


def _trust_row(model) -> str:
    """Whether search/add/serve may load the manifest's model without being told to."""
    from tp_rag.index.trust import describe

    state = describe(str(model) if model is not None else None)
    if state == "not allowed":
        return "not allowed: pass --model, --trust-index-model or add it to your allow-list"
    return f"{state} (loaded when needed)"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _version(value: bool):
    if value:
        from tp_rag import __version__

        typer.echo(f"tp-rag {__version__}")
        raise typer.Exit()


# -- serve / embed-corpus (defined in tp_rag.server.cli; their extras load on use) ----------------
app.command("serve")(serve)
app.command("embed-corpus")(embed_corpus)


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, envvar="TP_RAG_THREADS",
        help="CPU threads torch may use (default: torch's choice, one per core). On a machine "
        "busy with other work, fewer threads are often faster.")] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Log what the library decides on stderr (the model's dtype "
        "and why, conversions).")] = False,
):
    """Sentence and passage embeddings from decoder-only LLMs with Token Prepending, and FAISS
    indexes over them."""
    if verbose:
        import logging

        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("tp-rag: %(message)s"))
        logger = logging.getLogger("tp_rag")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="tp-rag")
