"""Choosing TP layers for any model on a dev set: ``tp-rag tune``.

One forward pass with every layer's last-token state scores all output layers at once, so a
sweep over ``tp_exit`` costs one pass per value (plus one for the vanilla prompt). Dev sets are
STS-style sentence pairs (Spearman of cosine vs gold) or a BEIR folder (nDCG@10).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np

from tp_rag.corpus import join_title
from tp_rag.encoder import Encoder


class DevSet(Protocol):
    metric: str

    def score_layers(self, encoder: Encoder, show_progress: bool) -> np.ndarray:
        """The metric for every output layer 1..L of ``encoder``, shape (L,)."""


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class PairsDevSet:
    """Sentence pairs with gold similarity scores; the metric is Spearman x 100."""

    sent1: list[str]
    sent2: list[str]
    gold: list[float]
    metric: str = "spearman"

    def __post_init__(self):
        if not (len(self.sent1) == len(self.sent2) == len(self.gold)):
            raise ValueError("pairs: sent1, sent2 and gold must have the same length")
        if len(self.gold) < 3:
            raise ValueError(f"pairs: need at least 3 scored pairs, got {len(self.gold)}")

    def score_layers(self, encoder: Encoder, show_progress: bool = False) -> np.ndarray:
        from scipy.stats import spearmanr

        unique = list(dict.fromkeys(self.sent1 + self.sent2))
        where = {s: i for i, s in enumerate(unique)}
        states = _unit(encoder.encode_all_layers(unique, show_progress=show_progress))
        a = states[:, [where[s] for s in self.sent1]]
        b = states[:, [where[s] for s in self.sent2]]
        cosine = (a * b).sum(-1)  # (L, n_pairs)
        return np.array([100 * spearmanr(layer, self.gold).statistic for layer in cosine])


@dataclass
class RetrievalDevSet:
    """Queries, a corpus and graded relevance judgements; the metric is nDCG@10 x 100."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    k: int = 10
    metric: str = field(default="ndcg@10")

    def __post_init__(self):
        self.queries = {q: t for q, t in self.queries.items() if q in self.qrels}
        if not self.queries:
            raise ValueError("retrieval dev set: no query has relevance judgements")
        if not self.corpus:
            raise ValueError("retrieval dev set: the corpus is empty")

    def score_layers(self, encoder: Encoder, show_progress: bool = False) -> np.ndarray:
        doc_ids, query_ids = list(self.corpus), list(self.queries)
        docs = _unit(encoder.encode_all_layers([self.corpus[d] for d in doc_ids], kind="document", show_progress=show_progress))
        queries = _unit(encoder.encode_all_layers([self.queries[q] for q in query_ids], kind="query"))
        scores = []
        for q_layer, d_layer in zip(queries, docs):
            ranking = np.argsort(-(q_layer @ d_layer.T), axis=1, kind="stable")[:, : self.k]
            runs = {q: [doc_ids[j] for j in row] for q, row in zip(query_ids, ranking)}
            scores.append(100 * mean_ndcg(runs, self.qrels, self.k))
        return np.array(scores)


def ndcg(ranked: Sequence[str], relevant: dict[str, int], k: int = 10) -> float:
    """nDCG@k with graded gains ``rel`` and log2 discounts (the trec_eval/BEIR definition)."""
    gains = [relevant.get(doc, 0) for doc in ranked[:k]]
    dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains) if g > 0)
    ideal = sorted((r for r in relevant.values() if r > 0), reverse=True)[:k]
    idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mean_ndcg(runs: dict[str, Sequence[str]], qrels: dict[str, dict[str, int]], k: int = 10) -> float:
    return float(np.mean([ndcg(runs.get(q, []), rel, k) for q, rel in qrels.items() if q in runs]))


# -- readers ------------------------------------------------------------------------------------
def read_pairs(path: str | Path) -> PairsDevSet:
    """Sentence pairs from JSONL (``sentence1``, ``sentence2``, ``score``), a 3-column TSV
    (sentence1, sentence2, score; a header line is skipped), or the STS Benchmark CSV layout
    (tab-separated, score in column 5, sentences in columns 6 and 7)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    s1, s2, gold = [], [], []
    if path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                try:
                    s1.append(row["sentence1"]), s2.append(row["sentence2"]), gold.append(float(row["score"]))
                except (KeyError, TypeError, ValueError) as err:
                    raise ValueError(f"{path}:{n}: need sentence1, sentence2 and a numeric score") from err
    else:
        with open(path, encoding="utf-8", newline="") as handle:
            for n, cols in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                if len(cols) >= 7:
                    score, a, b = cols[4], cols[5], cols[6]
                elif len(cols) == 3:
                    a, b, score = cols
                else:
                    raise ValueError(f"{path}:{n}: expected 3 tab-separated columns or the STS-B layout")
                try:
                    gold.append(float(score))
                except ValueError:
                    if n == 1:
                        continue  # header
                    raise ValueError(f"{path}:{n}: score {score!r} is not a number") from None
                s1.append(a), s2.append(b)
    return PairsDevSet(s1, s2, gold)


def read_beir(folder: str | Path, split: str = "dev", max_docs: Optional[int] = None, seed: int = 0) -> RetrievalDevSet:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv). ``max_docs`` keeps every
    judged document plus seeded random others, so a sweep on a large corpus stays affordable."""
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for needed in (folder / "corpus.jsonl", folder / "queries.jsonl", qrels_path):
        if not needed.is_file():
            raise FileNotFoundError(f"BEIR folder {folder}: {needed.name} not found ({needed})")
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8") as handle:
        for n, line in enumerate(handle):
            cols = line.rstrip("\n").split("\t")
            if n == 0 and cols[0] == "query-id":
                continue
            if len(cols) != 3:
                raise ValueError(f"{qrels_path}:{n + 1}: expected query-id, corpus-id, score")
            qrels.setdefault(cols[0], {})[cols[1]] = int(cols[2])
    corpus = {}
    for line in open(folder / "corpus.jsonl", encoding="utf-8"):
        if line.strip():
            row = json.loads(line)
            corpus[str(row["_id"])] = join_title(row.get("title"), row.get("text", ""))
    queries = {}
    for line in open(folder / "queries.jsonl", encoding="utf-8"):
        if line.strip():
            row = json.loads(line)
            if str(row["_id"]) in qrels:
                queries[str(row["_id"])] = row["text"]
    if max_docs is not None and len(corpus) > max_docs:
        judged = {d for rel in qrels.values() for d in rel if d in corpus}
        others = sorted(set(corpus) - judged)
        random.Random(seed).shuffle(others)
        keep = judged | set(others[: max(0, max_docs - len(judged))])
        corpus = {d: t for d, t in corpus.items() if d in keep}
    return RetrievalDevSet(corpus, queries, qrels)


# -- the sweep ----------------------------------------------------------------------------------
@dataclass
class SweepResult:
    metric: str
    rows: list[dict]  # settings per row: {"token_prepending": False} or tp_start/tp_exit
    scores: np.ndarray  # (rows, layers): metric for output layers 1..L

    @staticmethod
    def label(row: dict) -> str:
        return "vanilla" if not row["token_prepending"] else f"tp {row['tp_start']}..{row['tp_exit']}"

    def best(self, token_prepending: Optional[bool] = None) -> dict:
        """Best row/layer (optionally among TP or vanilla rows only): settings + score."""
        candidates = [i for i, r in enumerate(self.rows) if token_prepending in (None, r["token_prepending"])]
        if not candidates:
            raise ValueError("no sweep row matches")
        sub = self.scores[candidates]
        r, layer = np.unravel_index(int(np.nanargmax(sub)), sub.shape)
        return {**self.rows[candidates[r]], "output_layer": int(layer) + 1, self.metric: float(sub[r, layer])}

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "rows": [self.label(r) for r in self.rows],
            "settings": self.rows,
            "scores": np.round(self.scores, 4).tolist(),
            "best": self.best(),
            "best_vanilla": self.best(False) if any(not r["token_prepending"] for r in self.rows) else None,
        }

    def markdown(self) -> str:
        layers = self.scores.shape[1]
        lines = [
            f"| {self.metric} | " + " | ".join(str(k) for k in range(1, layers + 1)) + " |",
            "|---|" + "---:|" * layers,
        ]
        for row, values in zip(self.rows, self.scores):
            lines.append(f"| {self.label(row)} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
        return "\n".join(lines)

    def heatmap(self, path: str | Path, title: str = "") -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows, layers = self.scores.shape
        fig, ax = plt.subplots(figsize=(max(6, 0.55 * layers + 2), max(3, 0.45 * rows + 1.5)))
        image = ax.imshow(self.scores, aspect="auto", cmap="viridis")
        ax.set_xticks(range(layers), [str(k) for k in range(1, layers + 1)])
        ax.set_yticks(range(rows), [self.label(r) for r in self.rows])
        ax.set_xlabel("output layer")
        ax.set_title(title or f"{self.metric} by TP range and output layer")
        if rows * layers <= 400:  # values in the cells while they stay readable
            middle = np.nanmean(self.scores)
            for i in range(rows):
                for j in range(layers):
                    value = self.scores[i, j]
                    ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                            color="black" if value > middle else "white")
        best = self.best()
        r = next(i for i, row in enumerate(self.rows) if all(row[k] == best[k] for k in row))
        ax.scatter([best["output_layer"] - 1], [r], marker="*", s=160, c="red", label="best")
        ax.legend(loc="upper left", fontsize=8)
        fig.colorbar(image, ax=ax, label=self.metric)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def sweep(
    encoder: Encoder,
    devset: DevSet,
    tp_exits: Sequence[int],
    tp_start: int = 1,
    include_vanilla: bool = True,
    show_progress: bool = False,
) -> SweepResult:
    """Score vanilla and every ``tp_start..tp_exit`` for every output layer of ``encoder``'s
    model (its prompt and other settings are kept)."""
    if not tp_exits and not include_vanilla:
        raise ValueError("nothing to sweep: give tp_exits or include_vanilla")
    bad = [e for e in tp_exits if not tp_start < e <= encoder.num_layers]
    if bad:
        raise ValueError(
            f"tp_exit values {bad} are outside {tp_start + 1}..{encoder.num_layers} for this "
            f"{encoder.num_layers}-layer model with tp_start={tp_start}"
        )
    rows = [{"token_prepending": False}] if include_vanilla else []
    rows += [{"token_prepending": True, "tp_start": tp_start, "tp_exit": e} for e in tp_exits]
    scores = np.stack([devset.score_layers(encoder.replace(**row), show_progress) for row in rows])
    return SweepResult(devset.metric, rows, scores)
