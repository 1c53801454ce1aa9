"""The default RAG path on SciFact, and the anchors beside it (issue 11).

Every choice (passage length and overlap, centering variant, output layer of echo, fusion
weight) is made by nDCG@10 on ``qrels/train.tsv``; only the chosen setting is scored on
``qrels/test.tsv``. Scoring goes through the product's own code: passages from
:func:`tp_rag.passages.split_passages`, a real :class:`tp_rag.index.FaissIndex` over the
passage vectors (centering from :mod:`tp_rag.centering`, applied by the index), documents
ranked by :meth:`FaissIndex.search_vectors` (each document once, at its best passage), and
BM25 and fusion from :mod:`tp_rag.hybrid` through the same index.

Subset (``--docs N``; the full corpus without it): ``--train-queries``/``--test-queries``
queries drawn from each split with ``random.Random(seed)`` (all of a split when larger than
it), every document judged relevant for them, and seeded random other documents up to ``N``.
A small corpus makes every system look better than on the full 5,183 documents.

    python -m tp_rag_eval.rag_default --docs 1000 --train-queries 300 --test-queries 150 \\
        --threads 1 --out eval/results/rag_default

A system that costs a pass of its own can join an earlier run later: ``--systems echo --add``
scores only echo, keeps the other rows of ``<out>/results.json`` (the same data is required;
the earlier run is recorded under ``earlier_runs``) and times every row again in this run.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tp_rag import Encoder
from tp_rag.corpus import Document, read_documents
from tp_rag.passages import PassageSettings, split_passages
from tp_rag.presets import RETRIEVAL_PRESET
from tp_rag.tuning import read_beir
from tp_rag_eval.cache import cached_all_layers, cached_encode
from tp_rag_eval.common import default_cache_dir, default_data_root, run_record, write_json


# -- data -----------------------------------------------------------------------------------------
@dataclass
class Data:
    documents: list[Document]  # the (sub)corpus, with titles
    queries: dict[str, dict[str, str]]  # split -> {query id: text}
    qrels: dict[str, dict[str, dict[str, int]]]  # split -> {query id: {doc id: relevance}}
    description: dict


def load_data(folder: Path, docs: Optional[int], train_queries: Optional[int],
              test_queries: Optional[int], seed: int = 0) -> Data:
    """SciFact train and test, whole or as the seeded subset the module docstring describes."""
    splits = {"train": read_beir(folder, "train"), "test": read_beir(folder, "test")}
    rng = random.Random(seed)
    queries, qrels = {}, {}
    for split, wanted in (("train", train_queries), ("test", test_queries)):
        ids = sorted(splits[split].queries)
        if wanted is not None and wanted < len(ids):
            ids = sorted(rng.sample(ids, wanted))
        queries[split] = {q: splits[split].queries[q] for q in ids}
        qrels[split] = {q: splits[split].qrels[q] for q in ids}
    documents = list(read_documents(folder / "corpus.jsonl"))
    description = {"corpus": len(documents), "seed": seed}
    if docs is not None:
        judged = {d for split in qrels.values() for rel in split.values() for d in rel}
        others = sorted(d.id for d in documents if d.id not in judged)
        extra = set(rng.sample(others, max(0, min(len(others), docs - len(judged)))))
        keep = judged | extra
        documents = [d for d in documents if d.id in keep]
        description.update(subset=True, judged_documents=len(judged))
    description.update(documents=len(documents), **{f"{s}_queries": len(q) for s, q in queries.items()})
    return Data(documents, queries, qrels, description)


# -- encoders -------------------------------------------------------------------------------------
def retrieval_encoder(**overrides) -> Encoder:
    return Encoder.from_preset(RETRIEVAL_PRESET, **overrides)


VANILLA = dict(document_prompt=None, token_prepending=False, query_token_prepending=None,
               document_token_prepending=None)  # PromptEOL on both sides, no TP, same layer


def passages(documents: Sequence[Document], encoder, passage_tokens: Optional[int], overlap: int,
             split: bool = True) -> list[Document]:
    if not split:
        return list(documents)
    return list(split_passages(documents, encoder, PassageSettings(passage_tokens, overlap)))


def encode(encoder, texts: Sequence[str], kind: str, cache: Optional[Path], label: str) -> tuple[np.ndarray, float]:
    """Vectors through the eval cache, and the seconds per text of this call (0 when cached)."""
    started = time.perf_counter()
    vectors = cached_encode(encoder, texts, kind, cache, show_progress=True, desc=label)
    return vectors, (time.perf_counter() - started) / max(len(texts), 1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--docs", type=int, default=None, help="subset size (default: the full corpus)")
    parser.add_argument("--train-queries", type=int, default=None)
    parser.add_argument("--test-queries", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--stage", choices=["encode", "all"], default="all")
    parser.add_argument("--systems", nargs="+", default=None)
    parser.add_argument("--no-timing", action="store_true", help="skip the encode-time sample")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite <out>/TABLE.md from <out>/results.json")
    parser.add_argument("--add", action="store_true",
                        help="score only --systems and add their rows to <out>/results.json, keeping "
                             "the other rows; every row's encode time is measured again in this run")
    args = parser.parse_args(argv)
    if args.add and (not args.systems or args.stage != "all" or args.render):
        parser.error("--add needs --systems, and scores them (no --stage encode, no --render)")
    if args.render:
        from tp_rag_eval import rag_systems

        record = json.loads((args.out / "results.json").read_text())
        (args.out / "TABLE.md").write_text(rag_systems.markdown(record["results"], record["settings"]))
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from tp_rag_eval import rag_systems

    data = load_data((args.data or default_data_root()) / "beir" / "scifact", args.docs,
                     args.train_queries, args.test_queries, args.seed)
    cache = args.cache_dir or default_cache_dir() / "embeddings"
    print(json.dumps(data.description), flush=True)
    earlier = _earlier_run(args.out, data.description) if args.add else None
    results = rag_systems.run(data, cache, args.systems, encode_only=args.stage == "encode",
                              timing=not args.no_timing and not args.add)
    if args.stage != "all":
        return 0
    settings, extra = {**vars(args), **data.description}, {}
    if earlier is not None:
        results = {**earlier["results"], **results}
        if not args.no_timing:
            rag_systems.time_rows(data, rag_systems._encoders(), results)
        settings["systems"] = list(dict.fromkeys(earlier["settings"]["systems"] + args.systems))
        extra["earlier_runs"] = earlier.get("earlier_runs", []) + [
            {k: earlier.get(k) for k in ("date", "command", "machine")}
            | {"systems": earlier["settings"]["systems"], "git_commit": earlier["versions"].get("git_commit")}]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", run_record("rag-default", settings, results, **extra))
    (args.out / "TABLE.md").write_text(rag_systems.markdown(results, data.description))
    return 0


def _earlier_run(out: Path, description: dict) -> dict:
    """The record that ``--add`` extends, refused unless it scored the same documents and
    queries (its rows and the new ones must be comparable)."""
    path = out / "results.json"
    if not path.is_file():
        raise SystemExit(f"--add: no earlier run at {path}; run without --add first")
    record = json.loads(path.read_text())
    keys = ("corpus", "documents", "train_queries", "test_queries", "seed")
    mismatched = [k for k in keys if record["settings"].get(k) != description.get(k)]
    if mismatched:
        raise SystemExit(f"--add: {path} was scored on other data ({', '.join(mismatched)} differ); "
                         "use the same --docs/--train-queries/--test-queries/--seed")
    return record


if __name__ == "__main__":
    raise SystemExit(main())
