"""BEIR retrieval: the shared encoder as a BEIR dense model, BM25 and MiniLM as reference rows.

Any BEIR-layout folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) works via
``--data PATH``; ``--dataset NAME`` downloads the official BEIR zip instead (needs internet).
Dense rows use BEIR's exact search (cosine) and ``EvaluateRetrieval``; corpus and query vectors
go through the on-disk cache (``tp_rag_eval.cache``), so reruns only score.

    python -m tp_rag_eval.beir_eval --data ../shared/data/beir/scifact --split test \\
        --systems bm25 minilm prompteol/vanilla prompteol/tp --from-sweep eval/results \\
        --out eval/results/beir_scifact_test.json

``--subset N`` evaluates on a seeded subset (every doc judged in the split + N random others);
``--encode-only`` fills the cache without scoring (no ``beir`` needed: for a GPU box).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tp_rag_eval.cache import cached_encode, corpus_hash
from tp_rag_eval.common import (
    check_tokenizer,
    MINILM, MiniLMEncoder, default_cache_dir, default_data_root, run_record, write_json,
)

K_VALUES = [1, 3, 5, 10, 100]
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{}.zip"


# -- data --------------------------------------------------------------------------------------
def load_beir(folder: Path, split: str = "test"):
    """(corpus, queries, qrels) as BEIR's GenericDataLoader gives them: queries limited to those
    with judgments in ``qrels/<split>.tsv``."""
    folder = Path(folder)
    corpus: dict[str, dict[str, str]] = {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                doc = json.loads(line)
                corpus[str(doc["_id"])] = {"title": doc.get("title", "") or "",
                                           "text": doc.get("text", "") or ""}
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / f"{split}.tsv", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        next(reader)  # header
        for row in reader:
            if len(row) >= 3:
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    queries: dict[str, str] = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                q = json.loads(line)
                if str(q["_id"]) in qrels:
                    queries[str(q["_id"])] = q["text"]
    return corpus, queries, qrels


def resolve_data(data: Optional[Path], dataset: Optional[str], download_dir: Path) -> Path:
    if data is not None:
        return Path(data)
    if not dataset:
        raise SystemExit("give --data PATH (a BEIR-layout folder) or --dataset NAME")
    from beir import util

    return Path(util.download_and_unzip(BEIR_URL.format(dataset), str(download_dir)))


def doc_text(doc: dict[str, str]) -> str:
    """Title and text joined as BEIR's sentence-transformers models do (one space)."""
    text = f"{doc.get('title', '')} {doc.get('text', '')}".strip()
    return text or "(empty)"


def subset_corpus(corpus: dict, qrels: dict, n_random: int, seed: int = 0) -> dict:
    """Every document judged in ``qrels`` plus ``n_random`` others drawn with ``seed``."""
    judged = {d for rel in qrels.values() for d in rel if d in corpus}
    rest = sorted(set(corpus) - judged)
    extra = random.Random(seed).sample(rest, min(n_random, len(rest)))
    keep = judged | set(extra)
    return {d: corpus[d] for d in corpus if d in keep}


# -- BEIR's dense-model interface ---------------------------------------------------------------
class BeirDenseAdapter:
    """BEIR dense model (``encode_queries``/``encode_corpus``) over an Encoder and the cache."""

    def __init__(self, encoder, cache_dir: Optional[Path] = None, show_progress: bool = True):
        self.encoder = encoder
        self.cache_dir = cache_dir
        self.show_progress = show_progress

    def _out(self, vectors: np.ndarray, convert_to_tensor: bool):
        if convert_to_tensor:
            import torch

            return torch.from_numpy(np.ascontiguousarray(vectors))
        return vectors

    def encode_queries(self, queries: Sequence[str], batch_size: int = 32, **kwargs):
        vectors = cached_encode(self.encoder, list(queries), "query", self.cache_dir,
                                self.show_progress, desc="Encoding queries")
        return self._out(vectors, kwargs.get("convert_to_tensor", False))

    def encode_corpus(self, corpus, batch_size: int = 32, **kwargs):
        if isinstance(corpus, dict):  # some BEIR versions pass {"title": [...], "text": [...]}
            corpus = [{"title": t, "text": x} for t, x in zip(corpus["title"], corpus["text"])]
        texts = [doc_text(doc) for doc in corpus]
        vectors = cached_encode(self.encoder, texts, "document", self.cache_dir,
                                self.show_progress, desc="Encoding corpus")
        return self._out(vectors, kwargs.get("convert_to_tensor", False))


def evaluate_results(qrels, results, k_values=K_VALUES) -> dict[str, float]:
    from beir.retrieval.evaluation import EvaluateRetrieval

    ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(qrels, results, k_values)
    mrr = EvaluateRetrieval.evaluate_custom(qrels, results, k_values, metric="mrr")
    metrics = {**ndcg, **_map, **recall, **precision, **mrr}
    return {k: round(100 * float(v), 3) for k, v in metrics.items()}


def dense_retrieve(model, corpus, queries, top_k: int = 100, batch_size: int = 32):
    from beir.retrieval.search.dense import DenseRetrievalExactSearch as DRES

    search = DRES(model, batch_size=batch_size, corpus_chunk_size=100000,
                  show_progress_bar=False)
    return search.search(corpus, queries, top_k, "cos_sim")


def bm25_retrieve(corpus, queries, top_k: int = 100, k1: float = 1.5, b: float = 0.75):
    """bm25s (Lucene BM25), English stop words, Snowball stemming when PyStemmer is installed."""
    import bm25s

    try:
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
    except ImportError:
        stemmer = None
    ids = list(corpus)
    doc_tokens = bm25s.tokenize([doc_text(corpus[d]) for d in ids], stopwords="en",
                                stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(doc_tokens, show_progress=False)
    qids = list(queries)
    q_tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer,
                              show_progress=False)
    docs, scores = retriever.retrieve(q_tokens, k=min(top_k, len(ids)), show_progress=False)
    results = {q: {ids[int(d)]: float(s) for d, s in zip(docs[i], scores[i])}
               for i, q in enumerate(qids)}
    settings = {"k1": k1, "b": b, "method": "lucene", "stopwords": "en",
                "stemmer": "snowball-english (PyStemmer)" if stemmer else None}
    return results, settings


def fuse_runs(first: dict, second: dict, fusion: str, alpha: float, top_k: int) -> dict:
    """Fuse two BEIR runs per query with tp-rag's own fusion (tp_rag.hybrid), so the harness
    scores exactly what ``tp-rag search --mode hybrid`` ranks."""
    from tp_rag.hybrid import reciprocal_rank_fusion, weighted_fusion

    fused = {}
    for q in set(first) | set(second):
        lists = {name: sorted(run.get(q, {}).items(), key=lambda kv: (-kv[1], kv[0]))
                 for name, run in (("a", first), ("b", second))}
        if fusion == "rrf":
            ranked = reciprocal_rank_fusion(lists, limit=top_k)
        else:
            ranked = weighted_fusion(lists, {"a": 1.0 - alpha, "b": alpha}, limit=top_k)
        fused[q] = {f.id: f.score for f in ranked}
    return fused


# -- systems -----------------------------------------------------------------------------------
def parse_system(spec: str) -> tuple[str, Optional[str]]:
    """``bm25``, ``minilm`` or ``<prompt family>/<vanilla|tp>``."""
    if spec in ("bm25", "minilm"):
        return spec, None
    prompt, _, mode = spec.partition("/")
    if mode not in ("vanilla", "tp"):
        raise SystemExit(f"system {spec!r}: use bm25, minilm or <prompt>/<vanilla|tp>")
    return prompt, mode


def encoder_overrides(prompt: str, mode: str, args) -> dict:
    over = dict(prompt=prompt, token_prepending=mode == "tp", max_length=args.max_length,
                batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                preprocess=args.preprocess, tp_start=args.tp_start)
    if args.from_sweep:
        from tp_rag_eval.sts import sweep_choice

        # --layers-from: another prompt's sweep (a family not swept on its own)
        best = sweep_choice(args.from_sweep, getattr(args, "layers_from", None) or prompt)[mode]
        over["output_layer"] = best["output_layer"]
        if mode == "tp":
            over.update(tp_start=best["tp_start"], tp_exit=best["tp_exit"])
    if mode == "tp" and args.tp_exit is not None:
        over["tp_exit"] = args.tp_exit
    layer = args.output_layer if mode == "tp" else args.vanilla_output_layer
    if layer is not None:
        over["output_layer"] = layer
    if args.model:
        over["model"] = args.model
    return over


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tp_rag_eval.beir_eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="BEIR-layout folder")
    ap.add_argument("--dataset", default=None, help="BEIR dataset name to download (internet)")
    ap.add_argument("--download-dir", type=Path, default=default_data_root() / "beir")
    ap.add_argument("--split", default="test", help="qrels split (tune on train, report test)")
    ap.add_argument("--systems", nargs="+", default=["bm25", "prompteol/vanilla", "prompteol/tp"])
    ap.add_argument("--preset", default="gemma-3-270m")
    ap.add_argument("--model", default=None)
    ap.add_argument("--from-sweep", type=Path, default=None,
                    help="folder with sweep_stsb_dev_<prompt>.json: layers per prompt and mode")
    ap.add_argument("--tp-start", type=int, default=1)
    ap.add_argument("--tp-exit", type=int, default=None)
    ap.add_argument("--output-layer", type=int, default=None)
    ap.add_argument("--vanilla-output-layer", type=int, default=None)
    ap.add_argument("--preprocess", action="store_true", help="paper's sentence normalisation")
    ap.add_argument("--max-length", type=int, default=256, help="tokens per prompt (text cut)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--subset", type=int, default=None,
                    help="judged docs of the split + N seeded random others (default: full corpus)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-queries", type=int, default=None,
                    help="keep the first N queries (sorted ids) of the split and their judgments")
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--encode-only", action="store_true",
                    help="fill the embedding cache (all queries of the split + corpus), no scoring")
    ap.add_argument("--hybrid", nargs="*", default=[], metavar="A+B",
                    help="fused rows over two systems of --systems, e.g. bm25+prompteol/tp: "
                         "reciprocal rank fusion (k=60) and weighted fusion (--alpha on the "
                         "second system's min-max normalised scores), as tp-rag search does")
    ap.add_argument("--alpha", type=float, default=0.5, help="weighted fusion: weight of B")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    for pair in args.hybrid:
        if pair.count("+") != 1 or any(p not in args.systems for p in pair.split("+")):
            raise SystemExit(f"--hybrid {pair!r}: name two systems of --systems joined by '+'")

    folder = resolve_data(args.data, args.dataset, args.download_dir)
    corpus, queries, qrels = load_beir(folder, args.split)
    full_size, all_queries = len(corpus), len(queries)
    if args.max_queries is not None:
        keep = sorted(queries)[: args.max_queries]
        queries = {q: queries[q] for q in keep}
        qrels = {q: qrels[q] for q in keep}
    if args.subset is not None:
        corpus = subset_corpus(corpus, qrels, args.subset, args.seed)
    texts = [doc_text(d) for d in corpus.values()]
    data_info = {"folder": str(folder), "split": args.split, "corpus_docs": len(corpus),
                 "full_corpus_docs": full_size, "queries": len(queries),
                 "split_queries": all_queries,
                 "judgments": sum(len(v) for v in qrels.values()),
                 "corpus_hash": corpus_hash(texts),
                 "subset": None if args.subset is None else
                 {"rule": "every doc judged for the kept queries + N random others",
                  "n_random": args.subset,
                  "seed": args.seed}}
    print(f"[beir] {json.dumps(data_info)}", file=sys.stderr)
    cache = None if args.no_cache else args.cache_dir

    rows, runs = [], {}
    loaded = None
    for spec in args.systems:
        name, mode = parse_system(spec)
        start = time.time()
        if name == "bm25":
            if args.encode_only:
                continue
            results, settings = bm25_retrieve(corpus, queries, args.top_k)
        else:
            if name == "minilm":
                encoder = MiniLMEncoder(device=None if args.device == "auto" else args.device,
                                        max_length=args.max_length)
                settings = encoder.describe()
            else:
                from tp_rag import Encoder
                from tp_rag.models import load_model
                from tp_rag.presets import preset_config

                cfg = preset_config(args.preset, **encoder_overrides(name, mode, args))
                if loaded is None:
                    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
                    check_tokenizer(loaded.tokenizer)
                encoder = Encoder(cfg, loaded=loaded)
                settings = {**cfg.model_dump(), "resolved_output_layer": encoder.output_layer}
                print(f"[beir] {spec}: {encoder!r}", file=sys.stderr)
            adapter = BeirDenseAdapter(encoder, cache)
            if args.encode_only:
                adapter.encode_queries(list(queries.values()))
                adapter.encode_corpus(list(corpus.values()))
                print(f"[beir] {spec}: cached in {time.time() - start:.0f}s", file=sys.stderr)
                continue
            results = dense_retrieve(adapter, corpus, queries, args.top_k, args.batch_size)
            if cache is not None:
                from tp_rag_eval.cache import EmbeddingStore, cache_key

                store = EmbeddingStore(cache, cache_key(encoder, "document"))
                settings = {**settings, "cache_key": store.key,
                            "embeddings_provenance": store.provenance()}
        runs[spec] = results
        metrics = evaluate_results(qrels, results)
        row = {"system": spec if name != "minilm" else MINILM, "settings": settings,
               "seconds": round(time.time() - start, 1), "metrics": metrics}
        rows.append(row)
        print(json.dumps({row["system"]: {k: metrics[k] for k in
                                          ("NDCG@10", "MAP@100", "Recall@100", "MRR@10")}}),
              flush=True)
    for pair in args.hybrid:
        first, second = pair.split("+")
        for fusion in ("rrf", "weighted"):
            results = fuse_runs(runs[first], runs[second], fusion, args.alpha, args.top_k)
            metrics = evaluate_results(qrels, results)
            spec = f"{pair} ({fusion})"
            settings = {"fusion": fusion, "rrf_k": 60} if fusion == "rrf" else \
                {"fusion": fusion, "alpha": args.alpha, "weighted": second}
            rows.append({"system": spec, "settings": settings, "metrics": metrics})
            print(json.dumps({spec: {k: metrics[k] for k in
                                     ("NDCG@10", "MAP@100", "Recall@100", "MRR@10")}}), flush=True)
    if args.out and rows:
        record = run_record("beir", {"top_k": args.top_k, "k_values": K_VALUES,
                                     "score_function": "cos_sim (dense), exact search"},
                            rows, data=data_info)
        write_json(args.out, record)
        print(f"[beir] wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
