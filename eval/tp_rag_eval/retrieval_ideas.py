"""Retrieval ideas on SciFact, one row each, every choice made on ``qrels/train.tsv``.

Works from the all-layer states that grid jobs (``tp_rag_eval.grid``) stored, so it encodes
nothing: it recombines them. For each idea the setting (TP row, output layer, fusion and its
weight) is chosen by nDCG@10 on the train queries, and only that setting is scored on the test
queries with BEIR's metrics. Ideas:

* ``<prompt>/vanilla`` and ``<prompt>/tp``: the prompt without and with Token Prepending;
* ``<prompt>/tp docs only`` and ``<prompt>/tp queries only``: TP on one side, vanilla on the other;
* ``average <a>+<b>``: the unit vectors of two document templates averaged (MetaEOL-style), at
  the same TP row and layer;
* ``bm25`` and ``bm25 + <dense>``: tp-rag's own BM25 and fusion (``tp_rag.hybrid``, as
  ``tp-rag search --mode hybrid`` ranks), weighted fusion over alpha 0.05..0.9 or RRF (k = 60),
  over the train-best dense idea without TP and the train-best one with TP.

Cost per query / per document is the encoding time the grid measured (its device and dtype);
hybrid rows add the measured BM25 time per query.

    python -m tp_rag_eval.retrieval_ideas --grid eval/results/grid_scifact/passage_eol \\
        eval/results/grid_scifact/prompteol --out eval/results/grid_scifact
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tp_rag import Encoder, EncoderConfig
from tp_rag.hybrid import BM25Index, SearchOptions, fuse
from tp_rag.tuning import mean_ndcg
from tp_rag_eval.beir_eval import evaluate_results
from tp_rag_eval.cache import cached_all_layers
from tp_rag_eval.common import default_cache_dir, default_data_root, run_record, write_json
from tp_rag_eval.grid import PROMPTS, Retrieval, _unit

ALPHAS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
RRF_K = 60
SAME_DATA = ("model", "dtype", "max_length", "max_docs", "max_queries", "tp_start", "title", "chunk_words",
             "chunk_agg")


@dataclass
class Side:
    """All-layer states of one side (queries or documents) and what one text cost to encode."""

    states: np.ndarray  # (L, n, dim), unit vectors
    seconds_per_text: float


@dataclass
class Choice:
    name: str
    setting: str
    train_ndcg10: float
    run: dict  # test run {query: {doc: score}}
    seconds_per_query: float
    seconds_per_doc: float
    extra: dict = field(default_factory=dict)
    uses_tp: bool = False  # TP on either side (what the hybrid rows pick the best of)


VIEW_DEFAULTS = {"title": True, "chunk_words": None, "chunk_agg": "max"}  # grids that predate views


def _setting(settings: dict, key: str):
    return settings.get(key, VIEW_DEFAULTS.get(key))


def describe_row(row: dict) -> str:
    return f"TP {row['tp_start']}..{row['tp_exit']}" if row.get("token_prepending") else "vanilla"


class Ideas:
    def __init__(self, grids: Sequence[Path], data: Path, cache_dir: Path):
        self.records = [json.loads((g / "grid.json").read_text()) for g in grids]
        first = self.records[0]["settings"]
        for record in self.records[1:]:
            for key in SAME_DATA:
                mine, theirs = _setting(record["settings"], key), _setting(first, key)
                if mine != theirs:
                    raise SystemExit(f"grids differ in {key!r}: {mine!r} vs {theirs!r}; "
                                     "ideas compare like with like only")
        fields = set(EncoderConfig.model_fields)
        self.base = Encoder(EncoderConfig(**{k: v for k, v in first.items() if k in fields}))
        self.retrieval = Retrieval(data / "beir" / "scifact", max_docs=first["max_docs"],
                                   max_queries=first["max_queries"], title=_setting(first, "title"),
                                   chunk_words=_setting(first, "chunk_words"),
                                   chunk_agg=_setting(first, "chunk_agg"))
        self.cache_dir = cache_dir
        # prompt -> row label -> (row settings, query side, doc side)
        self.rows: dict[str, dict[str, tuple[dict, Side, Side]]] = {}
        for record in self.records:
            for cell in record["results"]:
                self._load(cell["prompt"], cell["settings"])

    def _side(self, encoder: Encoder, texts: list[str], kind: str, per: int) -> Side:
        """``per``: how many items the cost is spread over (documents, not chunks)."""
        try:
            states, seconds = cached_all_layers(encoder, texts, kind, self.cache_dir, only_cached=True)
        except LookupError:
            raise SystemExit(f"{kind} states of {encoder.config.templates(kind)} are not in {self.cache_dir}: "
                             "run tp_rag_eval.grid with the same settings (and --cache-dir) first")
        return Side(_unit(states), seconds / per)

    def _load(self, prompt: str, row: dict) -> None:
        encoder = self.base.replace(**PROMPTS[prompt], **row)
        queries = self._side(encoder, self.retrieval.queries, "query", len(self.retrieval.queries))
        docs = self._side(encoder, self.retrieval.corpus, "document", len(self.retrieval.corpus_ids))
        self.rows.setdefault(prompt, {})[describe_row(row)] = (row, queries, docs)

    # -- selection on train -----------------------------------------------------------------
    def _train_scores(self, q: np.ndarray, d: np.ndarray) -> list[float]:
        top, _ = self.retrieval.rank(q, d)
        return [self.retrieval.ndcg10(t, "train") for t in top]

    def choose(self, name: str, candidates: dict[str, tuple[Side, Side]]) -> Choice:
        """The (candidate, layer) with the best train nDCG@10; its test run."""
        best = (-np.inf, None, -1)
        for label, (q, d) in candidates.items():
            scores = self._train_scores(q.states, d.states)
            k = int(np.argmax(scores))
            if scores[k] > best[0]:
                best = (scores[k], label, k)
        score, label, k = best
        q, d = candidates[label]
        top, top_scores = self.retrieval.rank(q.states[k], d.states[k])
        return Choice(name, f"{label}, layer {k + 1}", round(score, 3),
                      self.retrieval.run(top, top_scores, "test"), q.seconds_per_text, d.seconds_per_text,
                      {"label": label, "layer": k + 1, "top": top, "scores": top_scores},
                      uses_tp=label != "vanilla")

    def prompt_ideas(self, prompt: str) -> list[Choice]:
        rows = self.rows[prompt]
        tp = {label: sides[1:] for label, sides in rows.items() if label != "vanilla"}
        if "vanilla" not in rows or not tp:  # a grid run with --no-vanilla or without TP rows
            return [self.choose(f"{prompt}/{'tp' if tp else 'vanilla'}", tp or {"vanilla": rows["vanilla"][1:]})]
        vanilla_q, vanilla_d = rows["vanilla"][1:]
        return [
            self.choose(f"{prompt}/vanilla", {"vanilla": (vanilla_q, vanilla_d)}),
            self.choose(f"{prompt}/tp", tp),
            self.choose(f"{prompt}/tp docs only", {f"{label} docs": (vanilla_q, d) for label, (_, d) in tp.items()}),
            self.choose(f"{prompt}/tp queries only", {f"{label} queries": (q, vanilla_d) for label, (q, _) in tp.items()}),
        ]

    def average_ideas(self, a: str, b: str) -> list[Choice]:
        """Document vectors of prompts ``a`` and ``b`` averaged (queries: ``a``'s), per shared row."""
        out = []
        shared = [label for label in self.rows[a] if label in self.rows[b]]
        for tp in (False, True):
            candidates = {}
            for label in shared:
                if (label != "vanilla") != tp:
                    continue
                (_, qa, da), (_, _, db) = self.rows[a][label], self.rows[b][label]
                mean = Side(_unit(da.states + db.states), da.seconds_per_text + db.seconds_per_text)
                candidates[label] = (qa, mean)
            if candidates:
                out.append(self.choose(f"average {a}+{b} docs/{'tp' if tp else 'vanilla'}", candidates))
        return out

    # -- hybrid -------------------------------------------------------------------------------
    def bm25(self) -> tuple[dict[str, list[tuple[str, float]]], float]:
        index = BM25Index(self.retrieval.corpus_ids, self.retrieval.documents)
        started = time.perf_counter()
        lists = {q: index.search(text, self.retrieval.top_k)
                 for q, text in zip(self.retrieval.query_ids, self.retrieval.queries)}
        return lists, (time.perf_counter() - started) / len(lists)

    def hybrid(self, dense: Choice, bm25: dict, bm25_seconds: float) -> Choice:
        """Fusion of ``dense`` (at its chosen setting) with BM25; fusion and alpha chosen on train."""
        top, top_scores = dense.extra["top"], dense.extra["scores"]  # every query, train and test
        ids = self.retrieval.corpus_ids
        dense_lists = {qid: [(ids[j], float(s)) for j, s in zip(row, vals)]
                       for qid, row, vals in zip(self.retrieval.query_ids, top, top_scores)}
        options = [SearchOptions(mode="hybrid", fusion="weighted", alpha=a) for a in ALPHAS]
        options.append(SearchOptions(mode="hybrid", fusion="rrf", rrf_k=RRF_K))

        def runs(option: SearchOptions, split: str) -> dict:
            qrels = self.retrieval.splits[split].qrels
            return {qid: {f.id: f.score for f in fuse(dense_lists[qid], bm25[qid], option, self.retrieval.top_k)}
                    for qid in self.retrieval.query_ids if qid in qrels}

        def train_ndcg(option: SearchOptions) -> float:
            run = runs(option, "train")
            ranked = {qid: sorted(hits, key=hits.get, reverse=True) for qid, hits in run.items()}
            return 100 * mean_ndcg(ranked, self.retrieval.splits["train"].qrels, 10)

        scored = [(train_ndcg(o), o) for o in options]
        best_score, best = max(scored, key=lambda item: item[0])
        fusion = f"weighted alpha {best.alpha}" if best.fusion == "weighted" else f"RRF k={best.rrf_k}"
        return Choice(f"bm25 + {dense.name}", f"{dense.setting}; {fusion}", round(best_score, 3),
                      runs(best, "test"), dense.seconds_per_query + bm25_seconds, dense.seconds_per_doc,
                      {"train_by_option": {(f"weighted {o.alpha}" if o.fusion == "weighted" else f"rrf {o.rrf_k}"):
                                           round(s, 3) for s, o in scored}})


def score(choices: list[Choice], qrels: dict) -> list[dict]:
    rows = []
    for c in choices:
        judged = {q: rel for q, rel in qrels.items() if q in c.run}
        metrics = evaluate_results(judged, c.run, k_values=[10, 100])
        rows.append({"idea": c.name, "setting": c.setting, "train_ndcg10": c.train_ndcg10,
                     **{m: metrics[m] for m in ("NDCG@10", "Recall@100", "MAP@100", "MRR@10")},
                     "ms_per_query": round(1000 * c.seconds_per_query, 3),
                     "ms_per_doc": round(1000 * c.seconds_per_doc, 3),
                     **{k: v for k, v in c.extra.items() if k == "train_by_option"}})
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| idea | setting (chosen on train) | train NDCG@10 | test NDCG@10 | Recall@100 | MAP@100 | "
           "ms / query | ms / doc |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['idea']} | {r['setting']} | {r['train_ndcg10']:.2f} | {r['NDCG@10']:.2f} | "
                   f"{r['Recall@100']:.2f} | {r['MAP@100']:.2f} | {r['ms_per_query']:.1f} | {r['ms_per_doc']:.1f} |")
    return "\n".join(out) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, nargs="+", required=True, help="grid job folders (grid.json)")
    parser.add_argument("--data", type=Path, default=None, help="data root with beir/scifact")
    parser.add_argument("--cache-dir", type=Path, default=None, help="the grid's layer store")
    parser.add_argument("--out", type=Path, required=True, help="folder for ideas.json and IDEAS.md")
    args = parser.parse_args(argv)

    ideas = Ideas(args.grid, args.data or default_data_root(), args.cache_dir or default_cache_dir() / "layers")
    choices: list[Choice] = []
    for prompt in ideas.rows:
        choices += ideas.prompt_ideas(prompt)
    prompts = list(ideas.rows)
    for i, a in enumerate(prompts):
        for b in prompts[i + 1:]:
            choices += ideas.average_ideas(a, b)
    bm25_lists, bm25_seconds = ideas.bm25()
    test_qrels = ideas.retrieval.splits["test"].qrels
    bm25_run = {q: dict(hits) for q, hits in bm25_lists.items() if q in test_qrels}
    bm25_train = 100 * mean_ndcg({q: [d for d, _ in hits] for q, hits in bm25_lists.items()},
                                 ideas.retrieval.splits["train"].qrels, 10)
    choices.append(Choice("bm25", "bm25s, Snowball stems (tp_rag.hybrid)", round(bm25_train, 3), bm25_run,
                          bm25_seconds, 0.0))
    # Fused with BM25: the train-best dense idea without TP and the train-best one with TP
    # (any of the TP ideas above, one-sided and averaged included).
    dense = [c for c in choices if c.name != "bm25"]
    for uses_tp in (False, True):
        candidates = [c for c in dense if c.uses_tp == uses_tp]
        if candidates:
            choices.append(ideas.hybrid(max(candidates, key=lambda c: c.train_ndcg10), bm25_lists, bm25_seconds))

    rows = score(choices, test_qrels)
    settings = {"grids": [str(g) for g in args.grid], "grid_settings": [r["settings"] for r in ideas.records],
                "alphas": ALPHAS, "rrf_k": RRF_K, "corpus_size": len(ideas.retrieval.corpus_ids), "passages": len(ideas.retrieval.corpus),
                "train_queries": len(ideas.retrieval.splits["train"].queries), "test_queries": len(test_qrels)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "ideas.json", run_record("retrieval-ideas", settings, rows))
    table = markdown(rows)
    (args.out / "IDEAS.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
