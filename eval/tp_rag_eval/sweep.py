"""Layer sweep on STS-B dev (the only split layers are tuned on).

For each ``tp_exit`` (TP before layers ``tp_start..tp_exit-1``) and for vanilla, one pass of
``encode_all_layers`` scores every output layer. Writes ``sweep_stsb_dev_<prompt>.json`` (grid,
best TP and best vanilla setting), ``.md`` and a heat-map ``.png``. Rows already in the JSON (same
settings) are reused, so a stopped sweep resumes; a file with other settings is not replaced
without ``--overwrite``. A long sweep can run as several processes (one per core), each with
some ``--tp-exits`` and its own ``--out-dir``; ``--merge`` then joins their rows into one file.

Ablation knobs (``--pst-init``, ``--tp-start``, ``--no-preprocess``, ``--padding-side``) need a
``--tag``, which goes into the file names (``sweep_stsb_dev_<prompt>_<tag>.*``), so an ablation
never replaces the main sweep that ``--from-sweep`` reads.

    python -m tp_rag_eval.sweep --prompt prompteol --tp-exits 2 3 4 5 6 7 8 9 10
    python -m tp_rag_eval.sweep --prompt prompteol --pst-init random --tag pst-random
    python -m tp_rag_eval.sweep --model qwen2.5-coder-0.5b --out-dir eval/results/qwen2.5-coder-0.5b
    python -m tp_rag_eval.sweep --merge /tmp/a/sweep_stsb_dev_prompteol.json /tmp/b/sweep_stsb_dev_prompteol.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tp_rag_eval.common import check_tokenizer, RESULTS_DIR, default_data_root, run_record, write_json
from tp_rag_eval.sts import evaluate_all_layers
from tp_rag_eval.sts_data import load_task

TASK = "STSB-dev"
# The main sweep's settings; any other value of these is an ablation and needs --tag.
ABLATION_DEFAULTS = {"pst_init": "mean", "tp_start": 1, "preprocess": True, "padding_side": "left"}


def sweep_stem(prompt: str, tag: Optional[str] = None) -> str:
    return f"sweep_stsb_dev_{prompt}" + (f"_{tag}" if tag else "")


def row_name(tp_exit: Optional[int], tp_start: int) -> str:
    return "vanilla" if tp_exit is None else f"tp {tp_start}..{tp_exit}"


def best_of(grid: dict[str, dict]) -> dict:
    """Best (row, output layer) for TP rows and for vanilla; ties -> the earlier row/layer.

    A TP row only counts output layers ``> tp_start``: the placeholder is first overwritten
    before layer ``tp_start``, so hidden states after ``<= tp_start`` layers are vanilla plus an
    untouched placeholder token, not Token Prepending (identical in every TP row). That
    "placeholder only" optimum is reported separately as ``placeholder_only``.
    """
    out = {}
    for mode in ("tp", "vanilla", "placeholder_only"):
        best = None
        for row in grid.values():
            if (row["tp_exit"] is None) != (mode == "vanilla"):
                continue
            values = row["spearman_by_layer"]
            if mode == "tp":
                layers = range(row["tp_start"] + 1, len(values) + 1)
            elif mode == "placeholder_only":
                layers = range(1, min(row["tp_start"], len(values)) + 1)
            else:
                layers = range(1, len(values) + 1)
            for k in layers:
                if best is None or values[k - 1] > best["spearman"]:
                    best = {"spearman": values[k - 1], "output_layer": k,
                            "tp_start": row["tp_start"], "tp_exit": row["tp_exit"]}
        if best is not None:
            if mode == "vanilla":
                best.pop("tp_start"), best.pop("tp_exit")
            out[mode] = best
    return out


def markdown(record: dict) -> str:
    grid = record["results"]["grid"]
    layers = len(next(iter(grid.values()))["spearman_by_layer"])
    best = record["results"]["best"]
    s = record["settings"]
    lines = [
        f"# STS-B dev layer sweep: {s['prompt']} ({s['model']})",
        "",
        f"Spearman x100 of cosine vs gold on {record['results']['n_pairs']} STS-B dev pairs; "
        f"rows: TP range (tp_start..tp_exit, 0-based decoder layers) or vanilla; columns: "
        f"output_layer (hidden state after k layers; {layers} = last, with the final norm).",
        f"preprocess={s.get('preprocess')}, max_length={s.get('max_length')}, "
        f"pst_init={s.get('pst_init')}.",
        "",
        f"Command: `{record['command']}`  ",
        f"Date: {record['date']}",
        *[f"Part {i}: `{part['command']}` ({part['date']})  "
          for i, part in enumerate(record.get("merged_from", []), 1)],
        "",
        "| row | " + " | ".join(str(k) for k in range(1, layers + 1)) + " |",
        "|---|" + "---:|" * layers,
    ]
    for name, row in grid.items():
        vals = row["spearman_by_layer"]
        top = max(vals)
        cells = [f"**{v:.2f}**" if v == top else f"{v:.2f}" for v in vals]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Bold = best layer in its row. Chosen settings (TP rows count only output layers "
              "> tp_start, where the placeholder overwrite can change the output; at layers "
              "<= tp_start a TP row is vanilla plus an untouched placeholder token):", ""]
    for mode, b in best.items():
        extra = f", tp {b['tp_start']}..{b['tp_exit']}" if mode != "vanilla" else ""
        lines.append(f"- {mode}: {b['spearman']:.2f} at output_layer {b['output_layer']}{extra}")
    return "\n".join(lines) + "\n"


def heatmap(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = record["results"]["grid"]
    names = list(grid)
    data = np.array([grid[n]["spearman_by_layer"] for n in names])
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * data.shape[1], 1.2 + 0.45 * len(names)))
    im = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_xticks(range(data.shape[1]), [str(k) for k in range(1, data.shape[1] + 1)])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("output_layer (hidden state after k decoder layers)")
    ax.set_ylabel("TP range / vanilla")
    lo, hi = np.nanmin(data), np.nanmax(data)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6.5,
                    color="black" if v > lo + 0.6 * (hi - lo) else "white",
                    fontweight="bold" if v == data[i].max() else "normal")
    s = record["settings"]
    scope = (f", seeded {s['sample']} pairs (seed {s.get('seed')})" if s.get("sample")
             else f", first {s['limit']} pairs" if s.get("limit") else "")
    ax.set_title(f"STS-B dev Spearman x100{scope}, {s.get('model')}, {s.get('prompt')}"
                 f"{', preprocess' if s.get('preprocess') else ''}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.025)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_tables(out_dir: Path, stem: str, record: dict) -> None:
    """The sweep's Markdown table and heat map beside its JSON."""
    (out_dir / f"{stem}.md").write_text(markdown(record))
    heatmap(record, out_dir / f"{stem}.png")


def settings_differ(a: Optional[dict], b: Optional[dict]) -> list[str]:
    """The settings in which two sweeps differ; ``tp_exits`` aside (rows of other ranges can
    join one sweep: a resumed run, or parts run in parallel)."""
    a, b, absent = a or {}, b or {}, object()  # a key only one side has differs
    return sorted(k for k in set(a) | set(b) if k != "tp_exits" and a.get(k, absent) != b.get(k, absent))


def merge_sweeps(records: Sequence[dict]) -> dict:
    """One record from sweeps of the same settings (``tp_exits`` aside) run in parallel: the
    union of their rows, ``best`` recomputed, each part's command kept under ``merged_from``."""
    if len(records) < 2:
        raise SystemExit("--merge needs two or more sweep files")
    first = records[0]
    grid: dict[str, dict] = {}
    for rec in records:
        if rec.get("kind") != "sweep":
            raise SystemExit(f"--merge: {rec.get('command')!r} is not a sweep record")
        differ = settings_differ(first["settings"], rec["settings"])
        if differ:
            raise SystemExit(f"--merge: the sweeps differ in {', '.join(differ)}; only rows of one "
                             "setting can share a table")
        for name, row in rec["results"]["grid"].items():
            grid.setdefault(name, row)  # a row run twice is the same row (deterministic encoder)
    grid = dict(sorted(grid.items(), key=lambda kv: kv[1]["tp_exit"] or 0))  # vanilla first
    exits = sorted({e for rec in records for e in rec["settings"].get("tp_exits") or []})
    n_pairs = {rec["results"]["n_pairs"] for rec in records}
    if len(n_pairs) != 1:
        raise SystemExit(f"--merge: the sweeps scored different numbers of pairs {sorted(n_pairs)}")
    return run_record("sweep", {**first["settings"], "tp_exits": exits},
                      {"task": TASK, "n_pairs": n_pairs.pop(), "grid": grid, "best": best_of(grid)},
                      merged_from=[{"date": r["date"], "command": r["command"]} for r in records])


def run_sweep(encoder_factory, prompt: str, tp_start: int, tp_exits: Sequence[int], data: Path,
              out_dir: Optional[Path], limit: Optional[int] = None, vanilla: bool = True,
              settings: Optional[dict] = None, show_progress: bool = True,
              sample: Optional[int] = None, seed: int = 0, tag: Optional[str] = None,
              overwrite: bool = False) -> dict:
    """``encoder_factory(tp_exit or None) -> Encoder``; returns the record (also written)."""
    subsets = load_task(data, TASK, limit, sample, seed)
    stem = sweep_stem(prompt, tag)
    json_path = out_dir / f"{stem}.json" if out_dir else None
    rows: list[Optional[int]] = ([None] if vanilla else []) + list(tp_exits)
    grid: dict[str, dict] = {}
    base_settings = None
    if json_path and json_path.is_file():
        old = json.loads(json_path.read_text())
        differ = settings_differ(old["settings"], settings)
        if not differ:
            grid = old["results"]["grid"]
            print(f"[sweep] resuming: {len(grid)} rows from {json_path}", file=sys.stderr)
        elif not overwrite:
            raise SystemExit(f"{json_path} holds a sweep with other settings ({', '.join(differ)}); "
                             "use --tag or --out-dir for this one, or --overwrite to replace it")
    record = None
    for tp_exit in rows:
        name = row_name(tp_exit, tp_start)
        if name in grid:
            continue
        encoder = encoder_factory(tp_exit)
        base_settings = base_settings or encoder.config.model_dump()
        print(f"[sweep] {name}: {encoder!r}", file=sys.stderr)
        res = evaluate_all_layers(encoder, subsets, show_progress)
        grid[name] = {"tp_start": tp_start if tp_exit else None, "tp_exit": tp_exit,
                      "spearman_by_layer": res["spearman"]}
        vals = res["spearman"]
        print(f"[sweep] {name}: best layer {int(np.argmax(vals)) + 1} = {max(vals):.2f}",
              file=sys.stderr, flush=True)
        record = run_record("sweep", settings,
                            {"task": TASK, "n_pairs": len(subsets[0]), "grid": grid,
                             "best": best_of(grid)})
        if json_path:
            write_json(json_path, record)
    if record is None:  # everything was cached
        record = json.loads(json_path.read_text())
    if out_dir:
        write_tables(out_dir, stem, record)
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tp_rag_eval.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data_root())
    ap.add_argument("--preset", default="gemma-3-270m")
    ap.add_argument("--model", default=None,
                    help="override the preset's model (also an extra model name, e.g. "
                    "qwen2.5-coder-0.5b: python -m tp_rag_eval.extra_models --list)")
    ap.add_argument("--prompt", default="prompteol")
    ap.add_argument("--tp-start", type=int, default=1)
    ap.add_argument("--tp-exits", type=int, nargs="+", default=list(range(2, 11)))
    ap.add_argument("--no-vanilla", dest="vanilla", action="store_false")
    ap.add_argument("--no-preprocess", dest="preprocess", action="store_false")
    ap.add_argument("--pst-init", choices=["mean", "zeros", "pad", "random"], default="mean",
                    help="the placeholder's input vector (random: the reference code's)")
    ap.add_argument("--padding-side", choices=["left", "right"], default="left",
                    help="batch padding side (vectors should not depend on it)")
    ap.add_argument("--tag", default=None,
                    help="suffix of the output files: sweep_stsb_dev_<prompt>_<tag>.*")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing sweep file that has other settings")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--limit", type=int, default=None, help="first N dev pairs (smoke runs)")
    ap.add_argument("--sample", type=int, default=None,
                    help="a seeded random sample of N dev pairs (for prompts too slow for all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of --sample")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="join the rows of sweep files run in parallel (same settings) into "
                    "<out-dir>/<their file name>, with its table and heat map")
    ap.add_argument("--rerender", action="store_true",
                    help="recompute 'best', the table and the heat map from the saved grid only")
    args = ap.parse_args(argv)
    if args.tag is not None and not args.tag.replace("-", "").replace("_", "").replace(".", "").isalnum():
        ap.error(f"--tag {args.tag!r}: use letters, digits, '-', '_' or '.'")
    ablated = [k for k, v in ABLATION_DEFAULTS.items() if getattr(args, k) != v]
    if ablated and not args.tag:
        ap.error(f"{', '.join('--' + k.replace('_', '-') for k in ablated)} differ from the main "
                 "sweep's settings: add --tag NAME so the main sweep file is not replaced")
    if args.merge:
        missing = [str(p) for p in args.merge if not p.is_file()]
        if missing:
            ap.error(f"--merge: no such file: {', '.join(missing)}")
        record = merge_sweeps([json.loads(p.read_text()) for p in args.merge])
        stem = args.merge[0].stem
        args.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(args.out_dir / f"{stem}.json", record)
        write_tables(args.out_dir, stem, record)
        print(json.dumps(record["results"]["best"], indent=1))
        return 0
    stem = sweep_stem(args.prompt, args.tag)
    if args.rerender:
        path = args.out_dir / f"{stem}.json"
        record = json.loads(path.read_text())
        record["results"]["best"] = best_of(record["results"]["grid"])
        record.setdefault("rerendered", []).append(
            {"date": run_record("x", {}, None)["date"], "command": run_record("x", {}, None)["command"]})
        write_json(path, record)
        write_tables(args.out_dir, stem, record)
        print(json.dumps(record["results"]["best"], indent=1))
        return 0

    from tp_rag import Encoder
    from tp_rag.models import load_model
    from tp_rag.presets import preset_config
    from tp_rag_eval.extra_models import resolve_model

    common = dict(prompt=args.prompt, preprocess=args.preprocess, max_length=args.max_length,
                  batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                  tp_start=args.tp_start, output_layer=-1, pst_init=args.pst_init)
    if args.model:
        common["model"] = resolve_model(args.model)  # an extra model name -> its assembled file
    base = preset_config(args.preset, **common)
    loaded = load_model(base.model, device=base.device, dtype=base.dtype)
    check_tokenizer(loaded.tokenizer)

    def factory(tp_exit):
        if tp_exit is None:
            encoder = Encoder(preset_config(args.preset, **common, token_prepending=False),
                              loaded=loaded)
        else:
            encoder = Encoder(preset_config(args.preset, **common, token_prepending=True,
                                            tp_exit=tp_exit), loaded=loaded)
        encoder.padding_side = args.padding_side
        return encoder

    settings = {"model": base.model, "prompt": args.prompt, "preprocess": args.preprocess,
                "max_length": args.max_length, "pst_init": base.pst_init, "dtype": args.dtype,
                "tp_start": args.tp_start, "tp_exits": args.tp_exits, "limit": args.limit,
                "data": str(args.data)}
    if args.sample:  # only when used, so earlier sweep files keep resuming
        settings.update(sample=args.sample, seed=args.seed)
    if args.padding_side != "left":  # likewise recorded only when ablated
        settings["padding_side"] = args.padding_side
    if args.tag:
        settings["tag"] = args.tag
    record = run_sweep(factory, args.prompt, args.tp_start, args.tp_exits, args.data,
                       args.out_dir, args.limit, args.vanilla, settings,
                       sample=args.sample, seed=args.seed, tag=args.tag,
                       overwrite=args.overwrite)
    print(json.dumps(record["results"]["best"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
