"""SentEval transfer tasks: logistic regression on frozen embeddings, accuracy (%).

SentEval's protocol (Conneau & Kiela 2018) with scikit-learn: MR, CR, SUBJ, MPQA by 10-fold
stratified cross-validation, the L2 penalty C chosen in each outer fold by an inner 10-fold CV
on its training part; SST-2 trained on train, C chosen on dev, accuracy on test; TREC and MRPC
trained on train with C chosen by 10-fold CV on train, accuracy on test. MRPC classifies the
pair features ``[u, v, |u-v|, u*v]`` (F1 is kept too). Features are standardised (the scaler
fitted on the training part only); the classifier is multinomial logistic regression (lbfgs).
Folds are seeded (SentEval's seed, 1111). Embeddings go through the on-disk cache.

    python -m tp_rag_eval.transfer --prompt prompteol --mode both --from-sweep eval/results \\
        --out eval/results/transfer_prompteol.json
    python -m tp_rag_eval.transfer --tasks MR TREC --limit 300 --folds 3   # a smoke run
    python -m tp_rag_eval.transfer --render a.json b.json --md table.md    # one table from runs
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from tp_rag_eval.cache import cached_encode
from tp_rag_eval.common import (
    MINILM, MiniLMEncoder, check_tokenizer, default_data_root, run_record,
    write_json,
)
from tp_rag_eval.sts import add_system_args
from tp_rag_eval.transfer_data import TASKS, TransferTask, limit_task, load_transfer_task

SEED = 1111  # SentEval's default seed (folds and sampling)
# SentEval's scikit-learn grid is C = 2^-2..2^3 on raw features. Standardising the features
# moves the useful range to stronger penalties (2^-8..2^-6 on CR with MiniLM, 2^-10 on MRPC's
# 4x wider pair features), so the grid spans 2^-14..2^2 in steps of 4x: accuracy is flat within
# a step, and the strong-penalty fits converge in a few iterations.
C_EXPONENTS = tuple(range(-14, 3, 2))
MAX_ITER = 1000
TOL = 1e-3  # lbfgs stopping tolerance: 3x fewer iterations than 1e-4, same chosen C on CR


def c_grid(exponents: Sequence[int] = C_EXPONENTS) -> list[float]:
    return [2.0 ** e for e in sorted(exponents)]  # weakest penalty last: the path warm-starts


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """SentEval's sentence-pair features: ``[u, v, |u - v|, u * v]``."""
    return np.hstack([u, v, np.abs(u - v), u * v])


class _Counted:
    """Counts scikit-learn's convergence warnings instead of printing one per fit."""

    def __enter__(self):
        from sklearn.exceptions import ConvergenceWarning

        self._ctx = warnings.catch_warnings(record=True)
        self.caught = self._ctx.__enter__()
        warnings.simplefilter("always", ConvergenceWarning)
        return self

    def __exit__(self, *exc):
        from sklearn.exceptions import ConvergenceWarning

        self.count = sum(issubclass(w.category, ConvergenceWarning) for w in self.caught)
        self._ctx.__exit__(*exc)


def _cv_logreg(cs: Sequence[float], folds: int, seed: int):
    """C by stratified k-fold CV (mean accuracy; ties: the stronger penalty), then a refit on
    all the data given; the C path is warm-started, weakest penalty last."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    return LogisticRegressionCV(
        Cs=list(cs), cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        scoring="accuracy", l1_ratios=(0.0,), solver="lbfgs", max_iter=MAX_ITER, tol=TOL,
        refit=True, use_legacy_attributes=False,
    )


def _check_classes(y: np.ndarray, needed: int, what: str) -> None:
    counts = np.bincount(y)
    counts = counts[counts > 0]
    if counts.min() < needed:
        raise ValueError(
            f"{what}: the smallest class has {counts.min()} items, fewer than the {needed} this "
            "cross-validation needs; use a larger --limit or fewer --folds"
        )


def nested_cv_accuracy(X: np.ndarray, y: np.ndarray, folds: int = 10,
                       cs: Sequence[float] = None, seed: int = SEED,
                       inner_folds: Optional[int] = None) -> dict:
    """Outer stratified k-fold; in each outer training part, C by inner k-fold CV (SentEval: the
    same k), then refit on that part and score the held-out fold. The scaler is fitted on the
    outer training part (its inner folds share it). Returns the mean test accuracy (%)."""
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    cs = c_grid() if cs is None else cs
    inner_folds = inner_folds or folds
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    _check_classes(y, folds + inner_folds, f"nested {folds}x{inner_folds}-fold CV")
    accuracies, chosen = [], []
    with _Counted() as counted:
        outer = StratifiedKFold(folds, shuffle=True, random_state=seed)
        for train, test in outer.split(X, y):
            scaler = StandardScaler().fit(X[train])
            clf = _cv_logreg(cs, inner_folds, seed).fit(scaler.transform(X[train]), y[train])
            accuracies.append(100.0 * clf.score(scaler.transform(X[test]), y[test]))
            chosen.append(float(clf.C_))
    return {"accuracy": round(float(np.mean(accuracies)), 4),
            "fold_accuracies": [round(a, 4) for a in accuracies], "chosen_C": chosen,
            "n": int(len(y)), "convergence_warnings": counted.count}


def cv_then_test_accuracy(X_train, y_train, X_test, y_test, folds: int = 10,
                          cs: Sequence[float] = None, seed: int = SEED) -> dict:
    """C by k-fold CV on train, refit on all of train, accuracy (%) and F1 (%) on test."""
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    cs = c_grid() if cs is None else cs
    X_train, X_test = np.asarray(X_train, np.float64), np.asarray(X_test, np.float64)
    _check_classes(np.asarray(y_train), folds, f"{folds}-fold CV on train")
    with _Counted() as counted:
        scaler = StandardScaler().fit(X_train)
        clf = _cv_logreg(cs, folds, seed).fit(scaler.transform(X_train), y_train)
        pred = clf.predict(scaler.transform(X_test))
    out = {"accuracy": round(100.0 * float(np.mean(pred == y_test)), 4),
           "cv_accuracy": round(100.0 * float(np.max(np.mean(clf.scores_[:, 0, :], axis=0))), 4),
           "chosen_C": float(clf.C_), "n": {"train": int(len(y_train)), "test": int(len(y_test))},
           "convergence_warnings": counted.count}
    if len(np.unique(y_train)) == 2:
        out["f1"] = round(100.0 * float(f1_score(y_test, pred)), 4)
    return out


def dev_test_accuracy(X_train, y_train, X_dev, y_dev, X_test, y_test,
                      cs: Sequence[float] = None) -> dict:
    """Train on train for each C (warm-started along the grid), choose C on dev, report test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    cs = c_grid() if cs is None else cs
    scaler = StandardScaler().fit(np.asarray(X_train, np.float64))
    tr, dv, te = (scaler.transform(np.asarray(x, np.float64)) for x in (X_train, X_dev, X_test))
    clf = LogisticRegression(solver="lbfgs", max_iter=MAX_ITER, tol=TOL, warm_start=True)
    dev, test = [], []
    with _Counted() as counted:
        for c in cs:
            clf.set_params(C=c).fit(tr, y_train)
            dev.append(100.0 * clf.score(dv, y_dev))
            test.append(100.0 * clf.score(te, y_test))
    best = int(np.argmax(dev))  # ties: the stronger penalty, as SentEval's argmax
    return {"accuracy": round(test[best], 4), "dev_accuracy": round(dev[best], 4),
            "chosen_C": cs[best], "dev_by_C": [round(d, 4) for d in dev],
            "n": {"train": int(len(y_train)), "dev": int(len(y_dev)), "test": int(len(y_test))},
            "convergence_warnings": counted.count}


def evaluate_task(encode: Callable[[list[str]], np.ndarray], task: TransferTask,
                  folds: int = 10, cs: Sequence[float] = None, seed: int = SEED,
                  inner_folds: Optional[int] = None) -> dict:
    """Embed every sentence of ``task`` once (``encode(texts) -> (n, dim)``) and score it."""
    import time

    sentences = task.sentences()
    vectors = np.asarray(encode(sentences), dtype=np.float64)
    row = {s: i for i, s in enumerate(sentences)}

    def features(name: str) -> tuple[np.ndarray, np.ndarray]:
        split = task.splits[name]
        u = vectors[[row[s] for s in split.texts]]
        if task.is_pairs:
            u = pair_features(u, vectors[[row[s] for s in split.texts_b]])
        return u, split.labels

    started = time.perf_counter()
    if task.protocol == "cv":
        result = nested_cv_accuracy(*features("all"), folds=folds, cs=cs, seed=seed,
                                    inner_folds=inner_folds)
    elif task.protocol == "dev_test":
        result = dev_test_accuracy(*features("train"), *features("dev"), *features("test"), cs=cs)
    else:
        result = cv_then_test_accuracy(*features("train"), *features("test"), folds=folds,
                                       cs=cs, seed=seed)
    result["protocol"] = task.protocol
    edge = grid_edge_note(result["chosen_C"], cs if cs is not None else c_grid())
    if edge:
        result["grid_note"] = edge
    result["classifier_seconds"] = round(time.perf_counter() - started, 1)
    if task.notes:
        result["data_notes"] = task.notes
    return result


def grid_edge_note(chosen, cs: Sequence[float]) -> Optional[str]:
    """A note when C was chosen at an end of the grid (the optimum may lie beyond it)."""
    chosen = chosen if isinstance(chosen, list) else [chosen]
    ends = [c for c in chosen if c in (min(cs), max(cs))]
    if not ends:
        return None
    return (f"C chosen at the grid's end ({ends[0]:g}) in {len(ends)} of {len(chosen)} fits; "
            "a wider --c-exponents range may score higher")


def evaluate_transfer(encoder, tasks: dict[str, TransferTask], cache_dir: Optional[Path],
                      folds: int = 10, cs: Sequence[float] = None, seed: int = SEED,
                      inner_folds: Optional[int] = None, show_progress: bool = True
                      ) -> dict[str, dict]:
    results = {}
    for name, task in tasks.items():
        def encode(texts, _name=name):
            return cached_encode(encoder, texts, "text", cache_dir, show_progress,
                                 desc=f"{_name} sentences")

        results[name] = evaluate_task(encode, task, folds, cs, seed, inner_folds)
        print(f"[transfer]   {name}: {results[name]['accuracy']:.2f}", file=sys.stderr, flush=True)
    return results


# -- tables -----------------------------------------------------------------------------------
def _model_label(row: dict) -> str:
    model = row.get("model") or (row.get("settings") or {}).get("model", "")
    return Path(model).name if "/" in str(model) else str(model)


def _merged_rows(records: Sequence[dict], across_limits: bool = False) -> list[dict]:
    """The records' rows, where rows of one system with the same model, settings and item
    limit (any limit with ``across_limits``) but other tasks (a run split into one file per
    task) become one row; a row that repeats a task it would be merged into stays a row of its own."""
    merged: list[dict] = []
    for record in records:
        limit = None if across_limits else record.get("settings", {}).get("limit")
        for row in record["results"]:
            key = (row["system"], _model_label(row), json.dumps(row.get("settings"), sort_keys=True), limit)
            into = next((m for m in merged if m["_key"] == key and not set(m["results"]) & set(row["results"])), None)
            if into is None:
                merged.append({**row, "results": dict(row["results"]), "_key": key})
            else:
                into["results"].update(row["results"])
    return merged


def markdown(records: Sequence[dict], across_limits: bool = False) -> str:
    """Rows = systems of every record (a system's per-task runs merged, also runs of other item
    limits with ``across_limits``); columns = tasks (in SentEval's order) and their average
    (only for rows that have every column)."""
    rows = _merged_rows(records, across_limits)
    present = {t for row in rows for t in row["results"]}
    tasks = [t for t in TASKS if t in present]
    limits = sorted({str(r["settings"].get("limit")) for r in records})
    lines = [
        "# SentEval transfer tasks: accuracy (%)",
        "",
        "Logistic regression (scikit-learn, lbfgs, standardised features) on frozen embeddings. "
        "MR, CR, SUBJ, MPQA: nested 10-fold CV; SST-2: C on dev, test accuracy; TREC, MRPC: C "
        "by CV on train, test accuracy (MRPC on [u, v, |u-v|, u*v]).",
        f"Item limit per split: {', '.join(limits)} (None = full sets).",
        "",
        "| system | model | dtype | " + " | ".join(tasks) + " | avg |",
        "|---|---|---|" + "---:|" * (len(tasks) + 1),
    ]
    for row in rows:
        values = [row["results"].get(t, {}).get("accuracy") for t in tasks]
        cells = [f"{v:.2f}" if v is not None else "-" for v in values]
        avg = f"{np.mean(values):.2f}" if values and None not in values else "-"
        dtype = (row.get("settings") or {}).get("dtype", "-")
        lines.append(f"| {row['system']} | {_model_label(row)} | {dtype} | " + " | ".join(cells) + f" | {avg} |")
    lines += ["", "Commands:", ""] + [f"- `{r['command']}` ({r['date']})" for r in records]
    notes = sorted({f"{t}: {n}" for row in rows for t, res in row["results"].items()
                    for n in res.get("data_notes", [])})
    if notes:
        lines += ["", "Data notes:", ""] + [f"- {n}" for n in notes]
    edges = [f"{row['system']} ({_model_label(row)}), {t}: {res['grid_note']}"
             for row in rows for t, res in row["results"].items() if res.get("grid_note")]
    if edges:
        lines += ["", "Regularisation at the grid's end:", ""] + [f"- {e}" for e in edges]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, records: Sequence[dict]) -> Path:
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False,
                                     encoding="utf-8") as tmp:
        tmp.write(markdown(records))
    os.replace(tmp.name, path)
    return path


# -- command line -----------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tp_rag_eval.transfer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data_root(),
                    help="data root holding senteval/ (or the SentEval folder itself)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, metavar="TASK",
                    help=f"some of {' '.join(TASKS)} (default: all)")
    ap.add_argument("--limit", type=int, default=None,
                    help="at most N items per split (seeded stratified sample; smoke runs, SST-2)")
    ap.add_argument("--folds", type=int, default=10, help="cross-validation folds (SentEval: 10)")
    ap.add_argument("--inner-folds", type=int, default=None,
                    help="inner folds choosing C for MR/CR/SUBJ/MPQA (default: --folds, as SentEval)")
    ap.add_argument("--seed", type=int, default=SEED, help="folds and --limit sample")
    ap.add_argument("--c-exponents", type=int, nargs="+", default=list(C_EXPONENTS),
                    help="the C grid as powers of two")
    add_system_args(ap)
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON; the Markdown table goes beside it (.md)")
    ap.add_argument("--render", type=Path, nargs="+", default=None, metavar="JSON",
                    help="only write one Markdown table from these result files (to --md)")
    ap.add_argument("--md", type=Path, default=None, help="with --render: the table's path")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.render:
        records = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.render]
        if args.md:
            write_markdown(args.md, records)
            print(f"[transfer] wrote {args.md}", file=sys.stderr)
        else:
            print(markdown(records), end="")
        return 0
    if args.folds < 2 or (args.inner_folds is not None and args.inner_folds < 2):
        ap.error("--folds and --inner-folds must be at least 2")
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be positive")

    cs = c_grid(args.c_exponents)
    try:
        tasks = {name: limit_task(load_transfer_task(args.data, name), args.limit, args.seed)
                 for name in args.tasks}
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cache = None if args.no_cache else args.cache_dir
    rows = []
    run = dict(cache_dir=cache, folds=args.folds, cs=cs, seed=args.seed,
               inner_folds=args.inner_folds)
    if not args.only_minilm:
        from tp_rag import Encoder
        from tp_rag.models import load_model
        from tp_rag.presets import preset_config
        from tp_rag_eval.extra_models import resolve_model
        from tp_rag_eval.sts import build_systems

        model_ref = args.model
        if args.model:
            args.model = resolve_model(args.model)  # an extra model name -> its assembled file
        loaded = None  # one model load shared by every row
        for name, over in build_systems(args):
            cfg = preset_config(args.preset, **over)
            if loaded is None:
                loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
                check_tokenizer(loaded.tokenizer)
            encoder = Encoder(cfg, loaded=loaded)
            print(f"[transfer] {name}: {encoder!r}", file=sys.stderr)
            res = evaluate_transfer(encoder, tasks, **run)
            rows.append({"system": name, "model": model_ref or cfg.model,
                         "settings": encoder.config.model_dump(),
                         "resolved_output_layer": encoder.output_layer, "results": res})
            print(json.dumps({name: {t: r["accuracy"] for t, r in res.items()}}), flush=True)
    if args.minilm or args.only_minilm:
        encoder = MiniLMEncoder(device=None if args.device == "auto" else args.device)
        res = evaluate_transfer(encoder, tasks, **run)
        rows.append({"system": MINILM, "model": MINILM, "settings": encoder.describe(),
                     "results": res})
        print(json.dumps({MINILM: {t: r["accuracy"] for t, r in res.items()}}), flush=True)
    if args.out:
        settings = {"data": str(args.data), "tasks": list(tasks), "limit": args.limit,
                    "folds": args.folds, "inner_folds": args.inner_folds or args.folds,
                    "seed": args.seed, "C_grid": cs,
                    "sizes": {n: t.sizes() for n, t in tasks.items()},
                    "classifier": "StandardScaler + LogisticRegression(lbfgs, L2, "
                                  f"tol={TOL}, max_iter={MAX_ITER}); metric: accuracy (%)"}
        record = run_record("transfer", settings, rows)
        write_json(args.out, record)
        write_markdown(args.out.with_suffix(".md"), [record])
        print(f"[transfer] wrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
