"""STS evaluation as in the paper: Spearman correlation (x100) of cosine similarity with gold.

STS12-16 report "all": every scored pair of the year pooled into one correlation (per-subset
values are kept too). STS-B and SICK-R report their test split.

    python -m tp_rag_eval.sts --prompt prompteol --mode both --from-sweep eval/results \\
        --tasks STSB-test SICK-R-test STS12 --out eval/results/sts_prompteol.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from tp_rag_eval.cache import cached_encode
from tp_rag_eval.common import (
    check_tokenizer,
    MINILM, MiniLMEncoder, default_cache_dir, default_data_root, run_record,
    write_json,
)
from tp_rag_eval.sts_data import Pairs, available_tasks, load_task


def spearman(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Spearman's rho (ties get average ranks), as a fraction in [-1, 1]."""
    from scipy.stats import spearmanr

    pred, gold = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if len(pred) != len(gold):
        raise ValueError(f"length mismatch: {len(pred)} predictions, {len(gold)} gold scores")
    if len(pred) < 2:
        raise ValueError("Spearman needs at least two pairs")
    return float(spearmanr(pred, gold).statistic)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows (last axis is the vector)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-12)


def score_subsets(vectors: dict[str, np.ndarray], subsets: Sequence[Pairs]) -> dict:
    """Spearman x100 per subset and pooled over all pairs ("all"); ``vectors`` maps sentence ->
    vector (or ``(num_layers, dim)`` stacks: then every value is a per-layer list)."""
    sims, golds, per = [], [], {}
    for pairs in subsets:
        a = np.stack([vectors[s] for s in pairs.sent1], axis=-2)
        b = np.stack([vectors[s] for s in pairs.sent2], axis=-2)
        sim = cosine_rows(a, b)
        sims.append(sim)
        golds.append(np.asarray(pairs.gold))
        per[pairs.name] = _spearman_x100(sim, pairs.gold)
    pooled = _spearman_x100(np.concatenate(sims, axis=-1), np.concatenate(golds))
    return {"spearman": pooled, "n_pairs": int(sum(len(p) for p in subsets)),
            "subsets": per if len(subsets) > 1 else {}}


def _spearman_x100(sim: np.ndarray, gold) -> float | list[float]:
    if sim.ndim == 1:
        return round(100 * spearman(sim, gold), 4)
    return [round(100 * spearman(row, gold), 4) for row in sim]


def embed_pairs(
    encode: Callable[[list[str]], np.ndarray], subsets: Sequence[Pairs]
) -> dict[str, np.ndarray]:
    sentences = list(dict.fromkeys(s for p in subsets for s in p.sentences()))
    vectors = encode(sentences)
    return {s: vectors[..., i, :] for i, s in enumerate(sentences)}


def evaluate_sts(
    encoder,
    tasks: Sequence[str],
    data_root: Path,
    cache_dir: Optional[Path] = None,
    limit: Optional[int] = None,
    show_progress: bool = True,
    sample: Optional[int] = None,
    seed: int = 0,
) -> dict[str, dict]:
    """Score ``encoder`` (a tp_rag Encoder or anything with ``encode(texts, kind=...)``)."""
    results = {}
    for task in tasks:
        subsets = load_task(data_root, task, limit, sample, seed)

        def encode(texts, _task=task):
            return cached_encode(encoder, texts, "text", cache_dir, show_progress,
                                 desc=f"{_task} sentences")

        results[task] = score_subsets(embed_pairs(encode, subsets), subsets)
    return results


def evaluate_all_layers(encoder, subsets: Sequence[Pairs], show_progress: bool = True) -> dict:
    """One pass, every output layer: Spearman x100 lists indexed by ``output_layer - 1``."""

    def encode(texts):
        return encoder.encode_all_layers(texts, kind="text", show_progress=show_progress)

    return score_subsets(embed_pairs(encode, subsets), subsets)


# -- systems from the command line ------------------------------------------------------------
def sweep_choice(sweep_dir: Path, prompt: str) -> dict:
    path = Path(sweep_dir) / f"sweep_stsb_dev_{prompt}.json"
    if not path.is_file():
        raise SystemExit(f"--from-sweep: {path} not found; run python -m tp_rag_eval.sweep first")
    return json.loads(path.read_text())["results"]["best"]


def add_system_args(ap) -> None:
    """The options that pick the systems to score (model, prompts, modes, layers, runtime,
    MiniLM, cache); shared by the STS and the transfer command lines with ``build_systems``."""
    ap.add_argument("--preset", default="gemma-3-270m")
    ap.add_argument("--model", default=None,
                    help="override the preset's model (also an extra model name, e.g. "
                    "qwen2.5-coder-0.5b: python -m tp_rag_eval.extra_models --list)")
    ap.add_argument("--prompt", nargs="+", default=["prompteol"], help="prompt families")
    ap.add_argument("--mode", choices=["vanilla", "tp", "both"], default="both")
    ap.add_argument("--from-sweep", type=Path, default=None,
                    help="folder with sweep_stsb_dev_<prompt>.json: take each mode's layers from it")
    ap.add_argument("--layers-from", default=None, metavar="PROMPT",
                    help="with --from-sweep: use this prompt's sweep for every --prompt")
    ap.add_argument("--tp-start", type=int, default=1)
    ap.add_argument("--tp-exit", type=int, default=None)
    ap.add_argument("--output-layer", type=int, default=None, help="TP rows' output layer")
    ap.add_argument("--vanilla-output-layer", type=int, default=None)
    ap.add_argument("--no-preprocess", dest="preprocess", action="store_false",
                    help="skip the paper's sentence normalisation (on by default, as for STS)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--minilm", action="store_true", help="also score all-MiniLM-L6-v2")
    ap.add_argument("--only-minilm", action="store_true", help="score only all-MiniLM-L6-v2")
    ap.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    ap.add_argument("--no-cache", action="store_true")


def build_systems(args) -> list[tuple[str, dict]]:
    from tp_rag_eval.beir_eval import encoder_overrides

    """(row name, Encoder overrides) for every prompt x mode asked for."""
    systems = []
    modes = ["vanilla", "tp"] if args.mode == "both" else [args.mode]
    for prompt in args.prompt:
        for mode in modes:
            over = encoder_overrides(prompt, mode, args)
            systems.append((f"{prompt}/{mode}", over))
    return systems


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tp_rag_eval.sts", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data_root(),
                    help="data root holding senteval/ (or the SentEval folder itself)")
    ap.add_argument("--tasks", nargs="+", default=["STSB-test", "SICK-R-test", "STS12"],
                    help="STS12..STS16, STSB-dev, STSB-test, SICK-R-test, or 'all' (what exists)")
    add_system_args(ap)
    ap.add_argument("--limit", type=int, default=None, help="first N pairs per subset (smoke runs)")
    ap.add_argument("--sample", type=int, default=None,
                    help="a seeded random sample of N pairs per subset (stated in the output)")
    ap.add_argument("--seed", type=int, default=0, help="seed of --sample")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default: print only)")
    args = ap.parse_args(argv)

    tasks = available_tasks(args.data) if args.tasks == ["all"] else args.tasks
    cache = None if args.no_cache else args.cache_dir
    rows = []
    if not args.only_minilm:
        from tp_rag import Encoder
        from tp_rag.models import load_model

        from tp_rag.presets import preset_config
        from tp_rag_eval.extra_models import resolve_model

        if args.model:  # an extra model name (qwen2.5-coder-0.5b) -> its assembled .gguf
            args.model = resolve_model(args.model)
        loaded = None  # one model load shared by every row
        for name, over in build_systems(args):
            if args.model:
                over["model"] = args.model
            cfg = preset_config(args.preset, **over)
            if loaded is None:
                loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
                check_tokenizer(loaded.tokenizer)
            encoder = Encoder(cfg, loaded=loaded)
            print(f"[sts] {name}: {encoder!r}", file=sys.stderr)
            res = evaluate_sts(encoder, tasks, args.data, cache, args.limit, sample=args.sample, seed=args.seed)
            rows.append({"system": name, "settings": encoder.config.model_dump(),
                         "resolved_output_layer": encoder.output_layer, "results": res})
            print(json.dumps({name: {t: r["spearman"] for t, r in res.items()}}), flush=True)
    if args.minilm or args.only_minilm:
        encoder = MiniLMEncoder(device=None if args.device == "auto" else args.device)
        res = evaluate_sts(encoder, tasks, args.data, cache, args.limit, sample=args.sample, seed=args.seed)
        rows.append({"system": MINILM, "settings": encoder.describe(), "results": res})
        print(json.dumps({MINILM: {t: r["spearman"] for t, r in res.items()}}), flush=True)
    if args.out:
        record = run_record("sts", {"data": str(args.data), "tasks": tasks, "limit": args.limit,
                                    "sample": args.sample, "seed": args.seed,
                                    "metric": "Spearman x100 of cosine vs gold; STS12-16 pooled 'all'"},
                            rows)
        write_json(args.out, record)
        print(f"[sts] wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
