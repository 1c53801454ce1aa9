"""Markdown tables from the result JSONs (no numbers typed by hand).

    python -m tp_rag_eval.report --results eval/results > eval/results/TABLES.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

STS_ORDER = ["STSB-dev", "STSB-test", "SICK-R-test", "STS12", "STS13", "STS14", "STS15", "STS16"]


def _setting(row: dict) -> str:
    s = row.get("settings", {})
    if "token_prepending" not in s:
        return s.get("model", "")
    layer = row.get("resolved_output_layer") or s.get("resolved_output_layer") or s.get("output_layer")
    tp = f"TP {s['tp_start']}..{s['tp_exit']}" if s["token_prepending"] else "vanilla"
    return f"{s['prompt']}, {tp}, layer {layer}"


def sts_tables(files: Sequence[Path]) -> list[str]:
    out = []
    for path in files:
        rec = json.loads(path.read_text())
        tasks = [t for t in STS_ORDER if any(t in r["results"] for r in rec["results"])]
        limit, sample = rec["settings"].get("limit"), rec["settings"].get("sample")
        scope = (f"first {limit} pairs per set" if limit else
                 f"seeded sample of {sample} pairs per set" if sample else "all pairs")
        out += [f"**{path.name}** ({scope}; {rec['date']})", "",
                f"`{rec['command']}`", "",
                "| system | settings | " + " | ".join(tasks) + " |",
                "|---|---|" + "---:|" * len(tasks)]
        for r in rec["results"]:
            cells = [f"{r['results'][t]['spearman']:.2f}" if t in r["results"] else "" for t in tasks]
            out.append(f"| {r['system']} | {_setting(r)} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def beir_tables(files: Sequence[Path]) -> list[str]:
    out = []
    for path in files:
        rec = json.loads(path.read_text())
        d = rec["data"]
        sub = d.get("subset")
        scope = (f"SUBSET: {d['corpus_docs']} of {d['full_corpus_docs']} docs ({sub['rule']}, "
                 f"N={sub['n_random']}, seed {sub['seed']})" if sub else
                 f"full corpus, {d['corpus_docs']} docs")
        nq = (f"{d['queries']} of {d['split_queries']} queries" if d.get("split_queries", d["queries"])
              != d["queries"] else f"{d['queries']} queries")
        out += [f"**{path.name}** ({d['split']} split, {nq}; {scope}; "
                f"{rec['date']})", "", f"`{rec['command']}`", "",
                "| system | settings | NDCG@10 | MAP@100 | Recall@100 | MRR@10 |",
                "|---|---|---:|---:|---:|---:|"]
        for r in rec["results"]:
            m = r["metrics"]
            setting = _setting(r) if r["system"] != "bm25" else (
                f"bm25s lucene k1={r['settings']['k1']} b={r['settings']['b']}, "
                f"stemmer={'yes' if r['settings'].get('stemmer') else 'no'}")
            out.append(f"| {r['system']} | {setting} | {m['NDCG@10']:.2f} | {m['MAP@100']:.2f} | "
                       f"{m['Recall@100']:.2f} | {m['MRR@10']:.2f} |")
        out.append("")
    return out


def sweep_lines(files: Sequence[Path]) -> list[str]:
    out = []
    for path in files:
        rec = json.loads(path.read_text())
        res = rec["results"]
        out += [f"**{path.name}** ({res['n_pairs']} STS-B dev pairs; {rec['date']})", "",
                f"`{rec['command']}`", ""]
        for mode, b in res["best"].items():
            extra = f", TP {b['tp_start']}..{b['tp_exit']}" if mode != "vanilla" else ""
            out.append(f"- {mode}: {b['spearman']:.2f} at output layer {b['output_layer']}{extra}")
        out.append("")
    return out


def ablation_lines(files: Sequence[Path]) -> list[str]:
    """One line per (sweep file, row): the last layer's score, the best layer's, and the
    difference from the vanilla row of the file tagged ``base`` (the same sampled pairs)."""
    recs = {json.loads(p.read_text())["settings"].get("tag") or p.stem: json.loads(p.read_text())
            for p in files}
    if not recs:
        return []
    base = next((r for t, r in recs.items() if t == "base" or str(t).endswith("_base")), None)
    ref = base["results"]["grid"]["vanilla"]["spearman_by_layer"][-1] if base else None
    first = next(iter(recs.values()))
    out = [f"{first['results']['n_pairs']} STS-B dev pairs (seeded sample: "
           f"{first['settings'].get('sample')}, seed {first['settings'].get('seed')}).", "",
           "| variant | row | last layer | best layer (k) | last layer minus base vanilla |",
           "|---|---|---:|---:|---:|"]
    for tag, rec in recs.items():
        for name, row in rec["results"]["grid"].items():
            vals = row["spearman_by_layer"]
            k = max(range(len(vals)), key=vals.__getitem__)
            delta = f"{vals[-1] - ref:+.2f}" if ref is not None else ""
            out.append(f"| {tag} | {name} | {vals[-1]:.2f} | {vals[k]:.2f} ({k + 1}) | {delta} |")
    cmds = [f"    {rec['command']}" for rec in recs.values()]
    return out + ["", "Commands:", ""] + cmds + [""]


def ideas_lines(files: Sequence[Path]) -> list[str]:
    from tp_rag_eval.retrieval_ideas import markdown

    out = []
    for path in files:
        rec = json.loads(path.read_text())
        out += [f"**{path.parent.name}/{path.name}** ({rec['settings']['test_queries']} test queries, "
                f"{rec['settings']['corpus_size']} documents; {rec['date']})", "", f"`{rec['command']}`", "",
                markdown(rec["results"]), ""]
    return out


def transfer_lines(folder: Path) -> list[str]:
    """The SentEval classification tables of one results folder: the full sets
    (``transfer_full/``) and the seeded samples (``transfer_*.json``), each via the transfer
    renderer (a system's per-task and per-limit files merged into one row)."""
    from tp_rag_eval.transfer import markdown

    out = []
    for title, files in (("full sets", sorted((folder / "transfer_full").glob("*.json"))),
                         ("seeded samples", sorted(folder.glob("transfer_*.json")))):
        if files:  # a sample's TREC runs on a larger limit (its smallest class needs 10 folds)
            records = [json.loads(f.read_text()) for f in files]
            body = markdown(records, across_limits=True).splitlines()[1:]
            out += [f"### Classification, {title}", *body, ""]
    return out


def extra_model_lines(res: Path) -> list[str]:
    """The sweeps and STS tables of each extra evaluation model, from ``<results>/<model name>/``."""
    from tp_rag_eval.extra_models import EXTRA_MODELS

    out = []
    for name, model in EXTRA_MODELS.items():
        folder = res / name
        if not folder.is_dir():
            continue
        out += [f"## Extra model: {name} ({model.description}; licence {model.licence})", "",
                "### STS-B dev layer sweeps", ""]
        out += sweep_lines(sorted(folder.glob("sweep_stsb_dev_*.json")))
        out += ["### STS (Spearman x100 of cosine vs gold; STS12-16 pooled 'all')", ""]
        out += sts_tables(sorted(folder.glob("sts_*.json")))
        out += transfer_lines(folder)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tp_rag_eval.report", description=__doc__)
    ap.add_argument("--results", type=Path, default=Path("eval/results"))
    args = ap.parse_args(argv)
    res = args.results
    lines = ["# Result tables (generated by `python -m tp_rag_eval.report`)", "",
             "## STS-B dev layer sweeps", ""]
    lines += sweep_lines(sorted(res.glob("sweep_stsb_dev_*.json")))
    lines += ["## Ablation on STS-B dev", ""]
    lines += ablation_lines(sorted((res / "ablation").glob("sweep_stsb_dev_*.json")))
    lines += ["## STS (Spearman x100 of cosine vs gold; STS12-16 pooled 'all')", ""]
    lines += sts_tables(sorted(res.glob("sts_*.json")))
    lines += ["## SentEval classification (accuracy %)", ""]
    lines += transfer_lines(res)
    lines += ["## BEIR retrieval", ""]
    lines += beir_tables(sorted(res.glob("beir_*.json")))
    lines += ["## Retrieval ideas (settings chosen on train, scored on test)", ""]
    lines += ideas_lines(sorted(res.glob("**/ideas.json")))
    lines += extra_model_lines(res)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
