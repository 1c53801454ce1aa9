"""The systems of :mod:`tp_rag_eval.rag_default`: what each embeds, and how it is scored."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tp_rag.index.core import title_queries
from tp_rag.passages import DEFAULT_OVERLAP
from tp_rag_eval.cache import cached_all_layers


def _encoders():
    from tp_rag_eval.rag_default import VANILLA, retrieval_encoder

    tp = retrieval_encoder()
    last = tp.replace(**LAST_TOKEN)
    vanilla = last.replace(**VANILLA)
    return {"tp": tp, "tp-last": last, "vanilla": vanilla, "tp-mean": tp.replace(pooling="mean"),
            "vanilla-mean": vanilla.replace(pooling="mean")}


# The previous retrieval default's pooling and layer (chosen on the full SciFact train grid):
# the anchor for what mean pooling changed, and the paper's way for the vanilla row.
LAST_TOKEN = dict(pooling="last", output_layer=-2)  # layer 17 of 18


# (name, encoder key, passage_tokens, overlap, split) for every dense document view.
VIEWS = {
    "tp": ("tp", None, DEFAULT_OVERLAP, True),
    "tp-last": ("tp-last", None, DEFAULT_OVERLAP, True),
    "tp-whole": ("tp", None, 0, False),
    "tp-o0": ("tp", None, 0, True),
    "tp-p128": ("tp", 128, DEFAULT_OVERLAP, True),
    "vanilla": ("vanilla", None, DEFAULT_OVERLAP, True),
}
# Systems recorded at every layer (the output layer chosen on train), over the default passages:
# name -> encoder key. Separates what echo embeddings gain by (layer, mean pooling, TP).
LAYER_VIEWS = {"tp-layers": "tp-last", "tp-mean": "tp-mean", "vanilla-mean": "vanilla-mean"}
ENCODE_ORDER = ["tp", "tp-last", "tp-whole", "pseudo", "vanilla", "echo", "tp-layers", "tp-mean",
                "vanilla-mean", "tp-p128", "tp-o0", "minilm"]


def run(data, cache: Path, systems: Optional[Sequence[str]], encode_only: bool = False,
        timing: bool = True) -> dict:
    from tp_rag_eval.rag_default import encode, passages

    encoders = _encoders()
    queries = {s: list(q.values()) for s, q in data.queries.items()}
    all_queries = queries["train"] + queries["test"]
    vectors: dict = {}
    for name in systems or ENCODE_ORDER:
        started = time.time()
        if name in VIEWS:
            key, tokens, overlap, split = VIEWS[name]
            enc = encoders[key]
            views = passages(data.documents, enc, tokens, overlap, split)
            q, q_cost = encode(enc, all_queries, "query", cache, f"{key} queries")
            d, d_cost = encode(enc, [p.embedding_text for p in views], "document", cache, f"{name} passages")
            vectors[name] = dict(views=views, queries=q, docs=d)
        elif name in LAYER_VIEWS:
            enc = encoders[LAYER_VIEWS[name]]
            views = passages(data.documents, encoders["tp"], None, DEFAULT_OVERLAP, True)
            q, _ = cached_all_layers(enc, all_queries, "query", cache / "layers")
            d, _ = cached_all_layers(enc, [p.embedding_text for p in views], "document", cache / "layers", True)
            vectors[name] = dict(views=views, queries=q, docs=d)
        elif name == "pseudo":  # titles embedded as queries: a query-side sample from the corpus
            enc = encoders["tp"]
            titles = title_queries(data.documents)  # the product's own sample
            vectors[name] = encode(enc, titles, "query", cache, "titles as queries")[0]
        elif name == "echo":
            from tp_rag_eval.echo import EchoEncoder

            echo = EchoEncoder(encoders["tp"], max_length=512)
            views = passages(data.documents, encoders["tp"], None, DEFAULT_OVERLAP, True)
            q, _ = cached_all_layers(echo, all_queries, "query", cache / "layers")
            d, _ = cached_all_layers(echo, [p.embedding_text for p in views], "document", cache / "layers", True)
            vectors[name] = dict(views=views, queries=q, docs=d)
        elif name == "minilm":
            from tp_rag_eval.common import MiniLMEncoder

            enc = MiniLMEncoder(device="cpu")
            q, _ = encode(enc, all_queries, "query", cache, "minilm queries")
            d, _ = encode(enc, [d.embedding_text for d in data.documents], "document", cache, "minilm docs")
            vectors[name] = dict(views=list(data.documents), queries=q, docs=d)
        print(f"{name}: {time.time() - started:.0f} s", flush=True)
    if encode_only:
        return {}
    return score_all(data, vectors, encoders, cache, timing)


# -- scoring --------------------------------------------------------------------------------------
ALPHAS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
CENTERINGS = ("none", "document-mean", "train-queries", "titles-as-queries")
DEPTH = 100


def no_flags_centering(titles_sample) -> str:
    """The product's centering without --query-sample: the corpus titles embedded as queries
    for the query side when there are enough (tp_rag.index.core.MIN_TITLE_QUERIES), else the
    documents' mean for both sides. The titles are the ``pseudo`` system's vectors."""
    from tp_rag.index.core import MIN_TITLE_QUERIES

    if titles_sample is not None and len(titles_sample) >= MIN_TITLE_QUERIES:
        return "titles-as-queries"
    return "document-mean"


class _Shape:
    """What FaissIndex needs of an encoder to index precomputed vectors: settings and width."""

    def __init__(self, config, dim: int):
        self.config, self.dim = config, dim


def make_index(system: dict, config, centering: str, query_sample: Optional[np.ndarray]):
    """A real FaissIndex over a system's passage vectors, centered as ``centering`` says."""
    from tp_rag.index import FaissIndex

    docs = system["docs"]
    index = FaissIndex(_Shape(config, docs.shape[1]), passages=None, centering=False)
    index.add_embeddings(docs, system["views"])
    if centering == "document-mean":
        index.fit_centering()
    elif centering in ("train-queries", "titles-as-queries"):
        index.fit_centering(query_vectors=query_sample)
    return index


def run_of(index, query_ids, vectors, texts, mode="dense", **options) -> dict:
    hits = index.search_vectors(vectors, DEPTH, queries=texts, mode=mode, **options)
    return {q: {h.id: h.score for h in row} for q, row in zip(query_ids, hits)}


def ndcg10(qrels, run) -> float:
    from tp_rag.tuning import mean_ndcg

    ranked = {q: sorted(docs, key=lambda d: -docs[d])[:10] for q, docs in run.items()}
    return 100 * mean_ndcg(ranked, qrels, 10)


class Split:
    """One split's query ids, texts and rows in the stacked query vectors (train first)."""

    def __init__(self, data, split: str):
        self.ids = list(data.queries[split])
        self.texts = list(data.queries[split].values())
        self.qrels = data.qrels[split]
        offset = 0 if split == "train" else len(data.queries["train"])
        self.rows = np.arange(offset, offset + len(self.ids))

    def half(self, which: int) -> "Split":
        out = object.__new__(Split)
        keep = slice(which, None, 2)
        out.ids, out.texts, out.rows = self.ids[keep], self.texts[keep], self.rows[keep]
        out.qrels = {q: self.qrels[q] for q in out.ids}
        return out


def train_ndcg(system, config, centering, splits, pseudo) -> float:
    """nDCG@10 on train; a query mean fitted on train queries is scored 2-fold (fitted on one
    half, scored on the other), so no query is scored by a mean it helped fit."""
    train, queries = splits["train"], system["queries"]
    if centering != "train-queries":
        sample = pseudo if centering == "titles-as-queries" else None
        index = make_index(system, config, centering, sample)
        return ndcg10(train.qrels, run_of(index, train.ids, queries[train.rows], train.texts))
    scores = []
    for fit, score in ((0, 1), (1, 0)):
        index = make_index(system, config, centering, queries[train.half(fit).rows])
        half = train.half(score)
        scores.append((ndcg10(half.qrels, run_of(index, half.ids, queries[half.rows], half.texts)), len(half.ids)))
    return sum(v * n for v, n in scores) / sum(n for _, n in scores)


def test_index(system, config, centering, splits, pseudo):
    sample = {"train-queries": system["queries"][splits["train"].rows],
              "titles-as-queries": pseudo}.get(centering)
    return make_index(system, config, centering, sample)


def metrics(qrels, run) -> dict:
    from tp_rag_eval.beir_eval import evaluate_results

    m = evaluate_results(qrels, run, [10, 100])
    return {"ndcg10": m["NDCG@10"], "recall10": m["Recall@10"], "recall100": m["Recall@100"]}


def score_all(data, vectors: dict, encoders: dict, cache: Optional[Path], timing: bool = True) -> dict:
    from tp_rag_eval.cache import cached_encode

    splits = {s: Split(data, s) for s in ("train", "test")}
    config = encoders["tp"].config
    titles = title_queries(data.documents)
    pseudo_by_encoder = {}
    rows = {}
    for name, system in vectors.items():
        if name == "pseudo":
            continue
        key = VIEWS[name][0] if name in VIEWS else name
        layers = [None]
        if system["docs"].ndim == 3:  # every layer recorded: the output layer chosen on train
            layers = list(range(system["docs"].shape[0]))
        best = None
        for layer in layers:
            view = system if layer is None else {**system, "docs": _unit(system["docs"][layer]),
                                                 "queries": _unit(system["queries"][layer])}
            if key == "tp":
                pseudo = vectors.get("pseudo")
            elif key == "vanilla":
                pseudo = cached_encode(encoders["vanilla"], titles, "query", cache, show_progress=False)
            else:
                pseudo = None  # titles-as-queries only for the models with a query template
            for centering in CENTERINGS:
                if centering == "titles-as-queries" and pseudo is None:
                    continue
                score = train_ndcg(view, config, centering, splits, pseudo)
                print(f"  {name} layer {layer} {centering}: train nDCG@10 {score:.2f}", flush=True)
                if best is None or score > best["train_ndcg10"]:
                    best = {"train_ndcg10": round(score, 3), "centering": centering,
                            "layer": None if layer is None else layer + 1, "view": view, "pseudo": pseudo}
        index = test_index(best["view"], config, best["centering"], splits, best["pseudo"])
        test = splits["test"]
        run = run_of(index, test.ids, best["view"]["queries"][test.rows], test.texts)
        rows[name] = {"setting": {"centering": best["centering"], "output_layer": best["layer"]},
                      "train_ndcg10": best["train_ndcg10"], "test": metrics(test.qrels, run),
                      "vectors": int(best["view"]["docs"].shape[0]),
                      "index_bytes": int(best["view"]["docs"].nbytes),
                      "_index": index, "_view": best["view"]}
        print(f"{name}: {rows[name]['setting']} train {best['train_ndcg10']:.2f} test {rows[name]['test']}", flush=True)
        if name == "tp":  # what `index build` gives with no flags: no query sample
            view, titles_sample = best["view"], vectors.get("pseudo")
            plain_centering = no_flags_centering(titles_sample)
            plain = make_index(view, config, plain_centering, titles_sample)
            rows["tp-no-flags"] = {
                "setting": {"centering": plain_centering, "output_layer": best["layer"]},
                "train_ndcg10": round(train_ndcg(view, config, plain_centering, splits, titles_sample), 3),
                "test": metrics(test.qrels, run_of(plain, test.ids, view["queries"][test.rows], test.texts)),
                "vectors": rows[name]["vectors"], "index_bytes": rows[name]["index_bytes"],
                "_index": plain, "_view": view}
    rows.update(keyword_rows(rows, splits))
    if "echo" in rows:  # does echo's better dense side carry over to hybrid search?
        bm25_bytes = len(rows["echo"]["_index"].bm25_index().to_bytes())
        rows["hybrid-echo"] = hybrid_row(rows, splits, "echo", bm25_bytes)
    for row in rows.values():
        row.pop("_index", None), row.pop("_view", None)
    if timing:
        time_rows(data, encoders, rows)
    return rows


# Rows that embed with another row's encoder, and so take its encode time; BM25 has none.
TIMED_AS = {"hybrid": "tp", "tp-no-flags": "tp", "hybrid-echo": "echo"}


def time_rows(data, encoders: dict, rows: dict) -> None:
    """Sets every row's ``ms_per_doc`` from one :func:`encode_ms` call, so the whole column
    comes from one machine and one run; each layer system is timed at the layer it chose."""
    timed_names = [n for n in rows if n != "bm25" and n not in TIMED_AS]
    layers = {n: rows[n]["setting"]["output_layer"] for n in timed_names if n in LAYER_VIEWS}
    for name, ms in encode_ms(data, encoders, timed_names, layers).items():
        rows[name]["ms_per_doc"] = ms
    for name, source in TIMED_AS.items():
        if name in rows and source in rows:
            rows[name]["ms_per_doc"] = rows[source].get("ms_per_doc")


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as the encoder returns them (recorded layers are raw)."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


TIMED_DOCS = 8
TIMED_ROUNDS = 3


def encode_ms(data, encoders: dict, names: Sequence[str], layers: Optional[dict] = None) -> dict:
    """Milliseconds per document to embed the first TIMED_DOCS documents (their passages for
    passage views), uncached, in this process: the median of TIMED_ROUNDS rounds after one
    untimed warm-up call per system (the first forward pass in a process pays one-off kernel
    set-up), the order rotating each round so no system is always first. Wall time on a shared
    machine, so still noisy. ``layers``: the output layer each layer system chose on train,
    which it is timed at (early exit makes a shallower layer cheaper)."""
    docs = data.documents[:TIMED_DOCS]
    calls = {name: _encode_call(name, docs, encoders, layers or {}) for name in names}
    for call in calls.values():
        call()  # warm-up, untimed
    times: dict = {name: [] for name in names}
    order = list(names)
    for _ in range(TIMED_ROUNDS):
        for name in order:
            started = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - started)
        order = order[1:] + order[:1]
    return {name: round(1000 * float(np.median(t)) / len(docs), 1) for name, t in times.items()}


def _encode_call(name: str, docs, encoders: dict, layers: dict):
    """A no-argument function that embeds ``docs`` the way system ``name`` does (models loaded
    and passages split beforehand, so only encoding is timed)."""
    from tp_rag_eval.rag_default import passages

    if name in VIEWS or name in LAYER_VIEWS:
        key, tokens, overlap, split = VIEWS.get(name) or (LAYER_VIEWS[name], None, DEFAULT_OVERLAP, True)
        texts = [p.embedding_text for p in passages(docs, encoders[key], tokens, overlap, split)]
        encoder = encoders[key]
        if name in layers:
            encoder = encoder.replace(output_layer=layers[name])
        return lambda: encoder.encode_documents(texts, show_progress=False)
    if name == "echo":
        from tp_rag_eval.echo import EchoEncoder

        texts = [p.embedding_text for p in passages(docs, encoders["tp"], None, DEFAULT_OVERLAP, True)]
        echo = EchoEncoder(encoders["tp"], max_length=512)
        return lambda: echo.encode_all_layers(texts)
    if name == "minilm":
        from tp_rag_eval.common import MiniLMEncoder

        model = MiniLMEncoder(device="cpu")
        texts = [d.embedding_text for d in docs]
        return lambda: model.encode(texts)
    raise ValueError(f"no encode-time recipe for system {name!r}")


def keyword_rows(rows: dict, splits: dict) -> dict:
    """BM25 alone and hybrid (weighted over ALPHAS, or RRF, chosen on train) over the
    default pipeline's index as `index build` makes it with no flags (the ``tp-no-flags`` row;
    ``tp`` without it), both through FaissIndex.search_vectors."""
    if "tp" not in rows:
        return {}
    dense = "tp-no-flags" if "tp-no-flags" in rows else "tp"
    index, view = rows[dense]["_index"], rows[dense]["_view"]
    train, test = splits["train"], splits["test"]
    out = {}
    bm25_train = ndcg10(train.qrels, run_of(index, train.ids, view["queries"][train.rows], train.texts, "bm25"))
    run = run_of(index, test.ids, view["queries"][test.rows], test.texts, "bm25")
    out["bm25"] = {"setting": {"bm25": "bm25s, Snowball stems (tp_rag.hybrid)"},
                   "train_ndcg10": round(bm25_train, 3), "test": metrics(test.qrels, run),
                   "vectors": 0, "index_bytes": len(index.bm25_index().to_bytes())}
    out["hybrid"] = hybrid_row(rows, splits, dense, out["bm25"]["index_bytes"])
    return out


def hybrid_row(rows: dict, splits: dict, dense: str, bm25_bytes: int) -> dict:
    """BM25 fused with row ``dense``'s index: RRF or weighted over ALPHAS, chosen on train."""
    index, view = rows[dense]["_index"], rows[dense]["_view"]
    train, test = splits["train"], splits["test"]
    options = [{"fusion": "rrf"}] + [{"fusion": "weighted", "alpha": a} for a in ALPHAS]
    best = None
    for option in options:
        score = ndcg10(train.qrels, run_of(index, train.ids, view["queries"][train.rows], train.texts,
                                           "hybrid", **option))
        print(f"  hybrid over {dense} {option}: train nDCG@10 {score:.2f}", flush=True)
        if best is None or score > best[0]:
            best = (score, option)
    run = run_of(index, test.ids, view["queries"][test.rows], test.texts, "hybrid", **best[1])
    return {"setting": {**rows[dense]["setting"], **best[1]},
            "train_ndcg10": round(best[0], 3), "test": metrics(test.qrels, run),
            "vectors": rows[dense]["vectors"], "index_bytes": rows[dense]["index_bytes"] + bm25_bytes}


LABELS = {
    "bm25": "BM25 (tp_rag.hybrid: bm25s, Snowball stems)",
    "minilm": "all-MiniLM-L6-v2 (whole documents, 256 word pieces)",
    "vanilla": "PromptEOL vanilla (no TP, last token, layer 17), token passages",
    "echo": "Echo embeddings (same model, text twice, mean of 2nd copy), token passages",
    "tp-whole": "TP retrieval preset, whole documents cut to 256 tokens (the old default)",
    "tp-o0": "TP retrieval preset, token passages without overlap",
    "tp-last": "TP, last token at layer 17 (the previous default), token passages",
    "tp-layers": "TP, last token, token passages, output layer chosen on train",
    "tp-mean": "TP retrieval preset with mean pooling over the text, layer chosen on train",
    "vanilla-mean": "PromptEOL vanilla with mean pooling over the text, layer chosen on train",
    "tp": "**TP retrieval preset, token passages (the default: mean pooling, layer 13), with a query sample**",
    "tp-no-flags": "**the same with no flags (no query sample: corpus titles embedded as queries when there are enough, else the documents' mean)**",
    "hybrid": "**hybrid: BM25 + the default dense side, no flags (the search default)**",
    "hybrid-echo": "hybrid: BM25 + the echo dense side (its centering as chosen on train)",
}


def markdown(results: dict, description: dict) -> str:
    lines = ["| system | setting (chosen on train) | train nDCG@10 | test nDCG@10 | test Recall@10 "
             "| test Recall@100 | vectors | index bytes | encode ms / doc |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ["bm25", "minilm", "vanilla", "vanilla-mean", "echo", "tp-whole", "tp-o0", "tp-last",
                 "tp-layers", "tp-mean", "tp", "tp-no-flags", "hybrid", "hybrid-echo"]:
        row = results.get(name)
        if row is None:
            continue
        setting = ", ".join(f"{k} {v}" for k, v in row["setting"].items() if v is not None)
        ms = row.get("ms_per_doc")
        lines.append(f"| {LABELS[name]} | {setting} | {row['train_ndcg10']:.2f} | "
                     f"{row['test']['ndcg10']:.2f} | {row['test']['recall10']:.2f} | "
                     f"{row['test']['recall100']:.2f} | {row['vectors']} | "
                     f"{row['index_bytes']} | {'' if ms is None else f'{ms:.0f}'} |")
    return "\n".join(lines) + "\n"
