"""The full layer grid in one job: every prompt x TP range x output layer, on SciFact and STS.

For each prompt and each row (vanilla, TP ``tp_start..tp_exit``) the corpus, the queries and the
STS sentences are embedded once with every layer's state (``Encoder.encode_all_layers``), and
every output layer is scored on the tuning split (SciFact ``qrels/train.tsv``, STS-B dev) and
the test splits. Selection uses the tuning split only: per prompt, the best vanilla and the best
TP (row, layer) on train are chosen, and only their test-query top-100 runs are written, for the
BEIR harness to score (``python -m tp_rag_eval.grid_report``). Test scores of the other cells
are kept in the grid for transparency, never for choosing.

    python -m tp_rag_eval.grid --device cuda --dtype bfloat16 --out /tmp/grid
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tp_rag import Encoder
from tp_rag.corpus import join_title
from tp_rag.tuning import mean_ndcg, read_beir
from tp_rag_eval.cache import cached_all_layers
from tp_rag_eval.common import default_cache_dir, default_data_root, run_record, write_json
from tp_rag_eval.sts_data import load_task

# Retrieval prompt set: name -> encoder overrides.
PROMPTS = {
    "prompteol": dict(prompt="prompteol"),
    "pretended_cot": dict(prompt="pretended_cot"),
    "knowledge": dict(prompt="knowledge"),
    "passage_eol": dict(prompt="prompteol", document_prompt="passage_eol"),
}
STS_TUNE = "STSB-dev"
STS_TESTS = ["STSB-test", "SICK-R-test", "STS12"]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _spearman(a: np.ndarray, b: np.ndarray, gold: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(100 * spearmanr((a * b).sum(-1), gold).statistic)


def _titles_and_texts(folder: Path) -> dict[str, tuple[str, str]]:
    out = {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                out[str(row["_id"])] = ((row.get("title") or "").strip(), row.get("text") or "")
    return out


class Retrieval:
    """SciFact train + test queries over one corpus, ranked at every layer.

    Document views (what the dense side embeds): ``"title. text"`` cut to the encoder's
    ``max_length`` (default); ``title=False``: the text alone; ``chunk_words=N``: each document
    split into chunks of N words (each embedded as ``"title. chunk"``), a document scoring the
    max or the mean (``chunk_agg``) of its chunks' scores.
    """

    def __init__(self, folder: Path, max_docs: Optional[int] = None, max_queries: Optional[int] = None,
                 top_k: int = 100, title: bool = True, chunk_words: Optional[int] = None,
                 chunk_agg: str = "max"):
        train, test = read_beir(folder, "train"), read_beir(folder, "test")
        if max_queries is not None:  # smoke runs: the first queries of each split
            for split in (train, test):
                split.qrels = dict(list(split.qrels.items())[:max_queries])
                split.queries = {q: t for q, t in split.queries.items() if q in split.qrels}
        if max_docs is not None:  # every judged document plus seeded random others
            judged = {d for split in (train, test) for rel in split.qrels.values() for d in rel}
            others = sorted(set(test.corpus) - judged)
            random.Random(0).shuffle(others)
            keep = judged | set(others[: max(0, max_docs - len(judged))])
            test.corpus = {d: t for d, t in test.corpus.items() if d in keep}
        self.corpus_ids = list(test.corpus)
        self.corpus = [test.corpus[d] for d in self.corpus_ids]
        self.documents = list(self.corpus)  # whole "title. text" (what BM25 indexes), one per id
        self.chunk_starts: Optional[np.ndarray] = None  # first chunk of each document
        self.chunk_agg = chunk_agg
        if chunk_agg not in ("max", "mean"):
            raise ValueError(f"chunk_agg must be max or mean, got {chunk_agg!r}")
        if not title or chunk_words is not None:
            raw = _titles_and_texts(folder)
            texts, starts = [], []
            for d in self.corpus_ids:
                head, body = raw[d]
                words = body.split() or [""]
                step = chunk_words or len(words)
                starts.append(len(texts))
                for i in range(0, len(words), step):
                    part = " ".join(words[i:i + step])
                    texts.append(join_title(head, part) if title else part or head)
            self.corpus = texts
            if chunk_words is not None:
                self.chunk_starts = np.asarray(starts)
        self.splits = {"train": train, "test": test}
        self.query_ids = list(dict.fromkeys([*train.queries, *test.queries]))
        self.queries = [{**train.queries, **test.queries}[q] for q in self.query_ids]
        self.top_k = top_k

    def states(self, encoder: Encoder, cache_dir: Optional[Path], show_progress: bool) -> dict:
        """All-layer states of the queries and the corpus, through the layer store, with the
        seconds each side took to encode (from the store when cached)."""
        docs, doc_seconds = cached_all_layers(encoder, self.corpus, "document", cache_dir, show_progress)
        queries, query_seconds = cached_all_layers(encoder, self.queries, "query", cache_dir)
        return {"queries": queries, "docs": docs,
                "seconds_per_doc": doc_seconds / len(self.corpus_ids),  # chunks included
                "seconds_per_query": query_seconds / len(self.queries)}

    def rank(self, queries: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k document indices and cosine scores of ``(queries, dim)`` over ``(docs, dim)``,
        or of every layer at once for ``(L, n, dim)`` inputs: ``(L, queries, k)`` each."""
        if queries.ndim == 2:
            top, scores = self.rank(queries[None], docs[None])
            return top[0], scores[0]
        tops, top_scores = [], []
        for q_layer, d_layer in zip(_unit(queries), _unit(docs)):
            scores = q_layer @ d_layer.T
            if self.chunk_starts is not None:  # chunk scores -> document scores
                if self.chunk_agg == "max":
                    scores = np.maximum.reduceat(scores, self.chunk_starts, axis=1)
                else:
                    counts = np.diff(np.append(self.chunk_starts, scores.shape[1]))
                    scores = np.add.reduceat(scores, self.chunk_starts, axis=1) / counts
            k = min(self.top_k, scores.shape[1])
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(part, order, axis=1)
            tops.append(top.astype(np.int32))
            top_scores.append(np.take_along_axis(scores, top, axis=1).astype(np.float32))
        return np.stack(tops), np.stack(top_scores)

    def ndcg10(self, top: np.ndarray, split: str) -> float:
        """nDCG@10 of one layer's ranking (queries, k) on a split's judgements."""
        qrels = self.splits[split].qrels
        ranked = {
            q: [self.corpus_ids[j] for j in row[:10]]
            for q, row in zip(self.query_ids, top) if q in qrels
        }
        return 100 * mean_ndcg(ranked, qrels, 10)

    def run(self, top: np.ndarray, scores: np.ndarray, split: str) -> dict[str, dict[str, float]]:
        """A BEIR-style run {query: {doc: score}} for the split's queries."""
        qrels = self.splits[split].qrels
        return {
            q: {self.corpus_ids[j]: float(v) for j, v in zip(row, vals)}
            for q, row, vals in zip(self.query_ids, top, scores) if q in qrels
        }


class STS:
    def __init__(self, root: Path, limit: Optional[int] = None):
        self.tasks = {t: load_task(root, t, limit) for t in [STS_TUNE, *STS_TESTS]}
        self.sentences = list(dict.fromkeys(
            s for subsets in self.tasks.values() for p in subsets for s in (*p.sent1, *p.sent2)
        ))

    def score_all_layers(self, encoder: Encoder, show_progress: bool) -> dict[str, list[float]]:
        where = {s: i for i, s in enumerate(self.sentences)}
        states = encoder.encode_all_layers(self.sentences, show_progress=show_progress)
        out = {}
        for task, subsets in self.tasks.items():
            # STS12-16 pool every scored pair of the year ("all").
            s1 = [s for p in subsets for s in p.sent1]
            s2 = [s for p in subsets for s in p.sent2]
            gold = [g for p in subsets for g in p.gold]
            a, b = _unit(states[:, [where[s] for s in s1]]), _unit(states[:, [where[s] for s in s2]])
            out[task] = [_spearman(a[k], b[k], gold) for k in range(len(states))]
        return out


def rows_for(tp_start: int, tp_exits: Sequence[int], vanilla: bool = True) -> list[dict]:
    return [{"token_prepending": False}] * vanilla + [
        {"token_prepending": True, "tp_start": tp_start, "tp_exit": e} for e in tp_exits
    ]


def best_cell(grid: list[dict], key: str, split: str, tp: bool) -> tuple[int, int]:
    """(row index, 0-based layer) maximising ``grid[row][key][split]`` among TP or vanilla rows."""
    best, where = -np.inf, (-1, -1)
    for i, cell in enumerate(grid):
        if cell["settings"]["token_prepending"] != tp:
            continue
        values = np.asarray(cell[key][split])
        k = int(np.nanargmax(values))
        if values[k] > best:
            best, where = values[k], (i, k)
    return where


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="data root with beir/scifact and senteval/")
    parser.add_argument("--out", type=Path, required=True, help="folder for grid.json and runs.json")
    parser.add_argument("--preset", default="gemma-3-270m")
    parser.add_argument("--model", default=None, help="override the preset's model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS), choices=list(PROMPTS))
    parser.add_argument("--sts-prompts", nargs="+", default=["prompteol", "pretended_cot", "knowledge"],
                        choices=list(PROMPTS), help="prompts also scored on STS")
    parser.add_argument("--tp-start", type=int, default=1)
    parser.add_argument("--tp-exits", type=int, nargs="*", default=[2, 3, 4, 5, 6, 8, 10])
    parser.add_argument("--no-vanilla", action="store_true", help="TP rows only")
    parser.add_argument("--max-docs", type=int, default=None, help="SciFact subset (smoke runs)")
    parser.add_argument("--max-queries", type=int, default=None, help="queries per split (smoke runs)")
    parser.add_argument("--no-title", action="store_true", help="documents without their title")
    parser.add_argument("--chunk-words", type=int, default=None,
                        help="split documents into chunks of N words; a document scores its best chunk")
    parser.add_argument("--chunk-agg", choices=["max", "mean"], default="max")
    parser.add_argument("--sts-limit", type=int, default=None, help="pairs per STS set (smoke runs)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="store of all-layer states (default: <eval cache>/layers); reruns and "
                             "tp_rag_eval.retrieval_ideas reuse it")
    parser.add_argument("--no-cache", action="store_true", help="do not store all-layer states")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    data = args.data or default_data_root()
    # TP off in the base: every row sets its own range (the preset's may not fit --model).
    overrides = dict(device=args.device, dtype=args.dtype, batch_size=args.batch_size, max_length=args.max_length,
                     token_prepending=False)
    if args.model:
        overrides["model"] = args.model
    base = Encoder.from_preset(args.preset, **overrides)
    retrieval = Retrieval(data / "beir" / "scifact", max_docs=args.max_docs, max_queries=args.max_queries,
                          title=not args.no_title, chunk_words=args.chunk_words, chunk_agg=args.chunk_agg)
    sts = STS(data, args.sts_limit)

    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir() / "layers")
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {**base.config.model_dump(), "tp_start": args.tp_start, "tp_exits": args.tp_exits,
                "prompts": {p: PROMPTS[p] for p in args.prompts}, "max_docs": args.max_docs,
                "max_queries": args.max_queries, "sts_limit": args.sts_limit,
                "corpus_size": len(retrieval.corpus_ids), "passages": len(retrieval.corpus),
                "title": not args.no_title, "chunk_words": args.chunk_words, "chunk_agg": args.chunk_agg}
    grid, selected_runs = [], {}
    for prompt in args.prompts:
        prompt_cells, prompt_runs = [], []
        for row in rows_for(args.tp_start, args.tp_exits, not args.no_vanilla):
            started = time.time()
            encoder = base.replace(**PROMPTS[prompt], **row)
            states = retrieval.states(encoder, cache_dir, args.progress)
            top, top_scores = retrieval.rank(states["queries"], states["docs"])
            del states["queries"], states["docs"]
            cell = {
                "prompt": prompt,
                "settings": row,
                **{k: round(v, 5) for k, v in states.items()},
                "scifact_ndcg10": {s: [round(retrieval.ndcg10(t, s), 3) for t in top] for s in ("train", "test")},
            }
            if prompt in args.sts_prompts:
                # STS as in the paper: the sentence normalisation is on.
                cell["sts_spearman"] = {
                    t: [round(v, 3) for v in vals]
                    for t, vals in sts.score_all_layers(encoder.replace(preprocess=True), args.progress).items()
                }
            cell["seconds"] = round(time.time() - started, 1)
            print(prompt, row, "train best", max(cell["scifact_ndcg10"]["train"]), "s", cell["seconds"], flush=True)
            prompt_cells.append(cell)
            prompt_runs.append((top, top_scores))
            # Written after every row, so an interrupted job keeps what it finished.
            write_json(args.out / "grid.json", run_record("layer-grid", settings, grid + prompt_cells))
        for tp in (False, True):
            if not any(c["settings"]["token_prepending"] == tp for c in prompt_cells):
                continue  # --no-vanilla, or no TP exits
            r, k = best_cell(prompt_cells, "scifact_ndcg10", "train", tp)
            top, top_scores = prompt_runs[r]
            run = retrieval.run(top[k], top_scores[k], "test")
            name = f"{prompt}/{'tp' if tp else 'vanilla'}"
            selected_runs[name] = {
                "settings": {**PROMPTS[prompt], **prompt_cells[r]["settings"], "output_layer": k + 1},
                "train_ndcg10": prompt_cells[r]["scifact_ndcg10"]["train"][k],
                "run": run,
            }
        grid += prompt_cells
        write_json(args.out / "runs.json", run_record("layer-grid-runs", settings, selected_runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
