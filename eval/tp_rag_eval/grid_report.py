"""Score a layer-grid job (``tp_rag_eval.grid``) with BEIR's metrics and write its tables.

Retrieval: per prompt, the vanilla and TP configurations chosen on SciFact ``qrels/train.tsv``
are scored on ``qrels/test.tsv`` with BEIR's ``EvaluateRetrieval`` (pytrec_eval): NDCG@10,
MAP@100, Recall@100, MRR@10. STS: per prompt, the (row, layer) with the best STS-B dev Spearman
is reported on STS-B test, SICK-R test and STS12 ("all").

    python -m tp_rag_eval.grid_report --grid eval/results/grid --out eval/results/grid/README.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tp_rag.tuning import read_beir
from tp_rag_eval.beir_eval import evaluate_results
from tp_rag_eval.common import default_data_root, write_json
from tp_rag_eval.grid import STS_TESTS, STS_TUNE, best_cell


def describe(settings: dict) -> str:
    if not settings.get("token_prepending"):
        return f"vanilla, layer {settings['output_layer']}"
    return f"TP {settings['tp_start']}..{settings['tp_exit']}, layer {settings['output_layer']}"


def retrieval_rows(runs: dict, qrels: dict) -> list[dict]:
    rows = []
    for name, entry in runs.items():
        # A grid run holds every query of its split (smoke runs: the first few), so restricting
        # the judgements to its queries drops nothing from a full run.
        judged = {q: rel for q, rel in qrels.items() if q in entry["run"]}
        metrics = evaluate_results(judged, entry["run"], k_values=[10, 100])
        rows.append({
            "system": name,
            "settings": entry["settings"],
            "train_ndcg10": entry["train_ndcg10"],
            "NDCG@10": metrics["NDCG@10"],
            "MAP@100": metrics["MAP@100"],
            "Recall@100": metrics["Recall@100"],
            "MRR@10": metrics["MRR@10"],
        })
    return rows


def sts_rows(grid: list[dict]) -> list[dict]:
    rows = []
    for prompt in dict.fromkeys(cell["prompt"] for cell in grid):
        cells = [c for c in grid if c["prompt"] == prompt and "sts_spearman" in c]
        if not cells:
            continue
        for tp in (False, True):
            if not any(c["settings"]["token_prepending"] == tp for c in cells):
                continue
            r, k = best_cell(cells, "sts_spearman", STS_TUNE, tp)
            scores = cells[r]["sts_spearman"]
            row = {"system": f"{prompt}/{'tp' if tp else 'vanilla'}",
                   "settings": {**cells[r]["settings"], "output_layer": k + 1},
                   STS_TUNE: scores[STS_TUNE][k]}
            row.update({t: scores[t][k] for t in STS_TESTS})
            row["avg"] = round(float(np.mean([scores[t][k] for t in STS_TESTS])), 3)
            rows.append(row)
    return rows


def markdown(retrieval: list[dict], sts: list[dict], meta: dict) -> str:
    out = ["| system (chosen on SciFact train) | setting | train NDCG@10 | NDCG@10 | MAP@100 | Recall@100 | MRR@10 |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in retrieval:
        out.append(f"| {r['system']} | {describe(r['settings'])} | {r['train_ndcg10']:.2f} | {r['NDCG@10']:.2f} | "
                   f"{r['MAP@100']:.2f} | {r['Recall@100']:.2f} | {r['MRR@10']:.2f} |")
    if not sts:
        return "\n".join(out) + "\n"
    out += ["", f"| system (chosen on {STS_TUNE}) | setting | {STS_TUNE} | " + " | ".join(STS_TESTS) + " | avg |",
            "|---|---|---:|" + "---:|" * (len(STS_TESTS) + 1)]
    for r in sts:
        out.append(f"| {r['system']} | {describe(r['settings'])} | {r[STS_TUNE]:.2f} | "
                   + " | ".join(f"{r[t]:.2f}" for t in STS_TESTS) + f" | {r['avg']:.2f} |")
    return "\n".join(out) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, required=True, help="folder with grid.json and runs.json")
    parser.add_argument("--data", type=Path, default=None, help="data root with beir/scifact")
    parser.add_argument("--out", type=Path, default=None, help="markdown table (default: print)")
    args = parser.parse_args(argv)
    grid = json.loads((args.grid / "grid.json").read_text())
    runs = json.loads((args.grid / "runs.json").read_text())
    qrels = read_beir((args.data or default_data_root()) / "beir" / "scifact", "test").qrels
    retrieval, sts = retrieval_rows(runs["results"], qrels), sts_rows(grid["results"])
    write_json(args.grid / "scores.json", {"retrieval": retrieval, "sts": sts, "grid_settings": grid["settings"],
                                           "grid_versions": grid["versions"], "grid_command": grid["command"]})
    table = markdown(retrieval, sts, grid)
    if args.out:
        args.out.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
