"""Markdown tables from the result JSON files: ``python -m tp_rag_eval.bench report``.

Ratios are recomputed from the raw per-repetition timings stored in each record (paired
ratios, their median and a bootstrap 95% interval of that median), so every table line can be
checked against the JSON next to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from tp_rag_eval.bench.common import paired_ratios


def _load(out_dir: Path, suite: str) -> Optional[dict]:
    path = out_dir / f"{suite}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _r(x: Optional[float], digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ratio(raw: dict, clock: str, variant: str, baseline: str) -> str:
    r = paired_ratios(raw[clock], baseline)[variant]
    lo, hi = r["paired_median_ci95"]
    return f"{r['paired_median']:.3f} [{lo:.3f}, {hi:.3f}]"


def _header(rec: dict) -> list[str]:
    m = rec["machine"]
    return [
        f"Command: `{rec['command']}`  ",
        f"Run {rec['date_utc']}, {rec['suite_wall_s']} s; {m['cpu_model']} ({m['logical_cpus']} logical CPUs, "
        f"flags {', '.join(m['cpu_flags'])}), torch {rec['versions']['torch']} with {m['torch_threads']} "
        f"thread(s); load average (1/5/15 min) before {rec['load_average_before']}, after "
        f"{rec['load_average_after']}; tp_rag commit {rec['git']['commit'][:10]}"
        f"{' (tp_rag/ modified in the working tree)' if rec['git'].get('dirty_core') else ''}.",
        "",
    ]


def _tp(rec: dict) -> list[str]:
    cfg = rec["settings"]["config"]
    lines = ["## Token Prepending overhead", *_header(rec),
             f"Same prompt ({cfg['prompt']}), output layer {cfg['output_layer']}, {cfg['dtype']}, "
             f"batch {cfg['batch_size']}, max_length {cfg['max_length']}; TP layers "
             f"{cfg['tp_start']}..{cfg['tp_exit'] - 1}. `tp_rows_no_hooks` = TP's rows (one more "
             "token, the PST input vector) without the TP hooks.", "",
             "| texts | reps | tokens/row vanilla -> TP | TP/vanilla wall | TP/vanilla CPU | no-hooks/vanilla CPU | TP/no-hooks CPU (hooks) |",
             "|---|---|---|---|---|---|---|"]
    for name, res in rec["results"].items():
        raw = res["timing_raw"]
        pad = res["padding"]
        hooks = "n/a"
        if "tp_rows_no_hooks" in raw["cpu_s"]:
            hooks = _ratio(raw, "cpu_s", "tp", "tp_rows_no_hooks")
        lines.append(
            f"| {name} ({res['n_texts']}) | {len(raw['wall_s']['vanilla'])} | "
            f"{pad['vanilla']['mean_row_tokens']:.1f} -> {pad['tp']['mean_row_tokens']:.1f} | "
            f"{_ratio(raw, 'wall_s', 'tp', 'vanilla')} | {_ratio(raw, 'cpu_s', 'tp', 'vanilla')} | "
            f"{_ratio(raw, 'cpu_s', 'tp_rows_no_hooks', 'vanilla') if 'tp_rows_no_hooks' in raw['cpu_s'] else 'n/a'} | {hooks} |"
        )
    return lines + [""]


def _early_exit(rec: dict) -> list[str]:
    lines = ["## Early exit", *_header(rec),
             "Time at output layer k over time at full depth L (same texts, TP on as in the preset).", "",
             "| texts | k/L | expected | wall ratio | CPU ratio | decoder layers run per batch |",
             "|---|---|---|---|---|---|"]
    for name, res in rec["results"].items():
        raw = res["timing_raw"]
        depth = res["num_layers"]
        full = f"k={depth}"
        for p in res["per_k"]:
            v = f"k={p['k']}"
            lines.append(
                f"| {name} ({res['n_texts']}) | {p['k']}/{depth} | {p['expected_ratio_k_over_L']:.3f} | "
                f"{_ratio(raw, 'wall_s', v, full)} | {_ratio(raw, 'cpu_s', v, full)} | {p['layers_run_per_batch']} |"
            )
        fit = res["linear_fit"].get("cpu") if isinstance(res["linear_fit"].get("cpu"), dict) else None
        if fit:
            lines.append(f"| {name}: CPU-time fit t(k) = a + b k | | | | a = {fit['intercept_fraction_of_full']:.1%} of t(L) | |")
    return lines + [""]


def _batching(rec: dict) -> list[str]:
    res = rec["results"]["passages"]
    raw, pad = res["timing_raw"], res["padding"]
    cfg = rec["settings"]["config"]
    vec = res["vectors_sorted_vs_unsorted"]
    return [
        "## Length-sorted vs unsorted batching", *_header(rec),
        f"{res['n_texts']} SciFact passages in corpus order, batch {cfg['batch_size']}, max_length "
        f"{cfg['max_length']}, output layer {cfg['output_layer']}. Unsorted = the encoder's own "
        "batching with `iter_batches(..., sort=False)` swapped in (benchmark only).", "",
        "| | pad fraction | padded tokens | wall ratio vs sorted | CPU ratio vs sorted |",
        "|---|---|---|---|---|",
        f"| sorted | {pad['sorted']['pad_fraction']:.3f} | {pad['sorted']['padded_tokens']} | 1 | 1 |",
        f"| unsorted | {pad['unsorted']['pad_fraction']:.3f} | {pad['unsorted']['padded_tokens']} | "
        f"{_ratio(raw, 'wall_s', 'unsorted', 'sorted')} | {_ratio(raw, 'cpu_s', 'unsorted', 'sorted')} |",
        "",
        f"Executed FLOPs unsorted/sorted: {res['executed_flops_ratio_unsorted_over_sorted']:.3f}. "
        f"Vectors sorted vs unsorted: max |diff| {vec['max_abs_diff']:.2e}, min cosine {vec['cosine_min']:.6f}.",
        "",
    ]


def _dtype(rec: dict) -> list[str]:
    lines = ["## float32 vs bfloat16", *_header(rec),
             "| texts | reps | bf16/fp32 wall | bf16/fp32 CPU | max abs diff (normalised vectors) | min cosine fp32 vs bf16 |",
             "|---|---|---|---|---|---|"]
    for name, res in rec["results"].items():
        raw = res["timing_raw"]
        d = res["vectors_vs_float32"]["bfloat16"]
        lines.append(
            f"| {name} ({res['n_texts']}) | {len(raw['wall_s']['float32'])} | {_ratio(raw, 'wall_s', 'bfloat16', 'float32')} | "
            f"{_ratio(raw, 'cpu_s', 'bfloat16', 'float32')} | {d['max_abs_diff']:.4f} | {d['cosine_min']:.5f} |"
        )
    return lines + [""]


def _flops(rec: dict) -> list[str]:
    res = rec["results"]["passages"]
    fm = res["flop_model"]
    mm = res["matmul_flop_per_s"]
    frac = res["executed_fraction_of_matmul_same_dtype"]
    wall, cpu = res["summary"]["wall_s"], res["summary"]["cpu_s"]
    # Per CPU-second (one thread: per second of one core actually given to this process)
    enc_cpu = res["flops"]["executed"] / cpu["encode"]["median"]
    mm_cpu = {k: mm[k] * wall[k]["median"] / cpu[k]["median"] for k in mm}
    same = "matmul_" + res["model_dtype"]
    return [
        "## Achieved FLOP/s vs dense matmul", *_header(rec),
        f"{res['n_texts']} passages ({res['padding']['real_tokens']} real / {res['padding']['padded_tokens']} padded tokens), "
        f"output layer {res['output_layer']}, {res['model_dtype']}; encode interleaved with {res['matmul_n']}^2 matmuls. "
        f"Formula: per layer run, 2 x {fm['linear_params_per_layer']:,} linear weights x tokens + 4 x {fm['attn_dim']} x "
        "attended pairs (executed: padded square; useful: real tokens, causal).", "",
        "| | GFLOP per wall second (median) | GFLOP per CPU second (median) |", "|---|---|---|",
        f"| encode, executed FLOPs ({res['flops']['executed'] / 1e9:.1f} GFLOP) | {res['encode_executed_flop_per_s'] / 1e9:.1f} | {enc_cpu / 1e9:.1f} |",
        f"| encode, useful FLOPs ({res['flops']['useful'] / 1e9:.1f} GFLOP) | {res['encode_useful_flop_per_s'] / 1e9:.1f} | {res['flops']['useful'] / cpu['encode']['median'] / 1e9:.1f} |",
        f"| torch.matmul float32 | {mm['matmul_float32'] / 1e9:.1f} | {mm_cpu['matmul_float32'] / 1e9:.1f} |",
        f"| torch.matmul bfloat16 | {mm['matmul_bfloat16'] / 1e9:.1f} | {mm_cpu['matmul_bfloat16'] / 1e9:.1f} |",
        "",
        f"Per CPU second, encode reaches {enc_cpu / mm_cpu.get(same, float('nan')):.2f} of the {res['model_dtype']} matmul rate "
        f"(executed FLOPs; {res['flops']['useful'] / cpu['encode']['median'] / mm_cpu.get(same, float('nan')):.2f} counting useful FLOPs only).",
        "",
        f"Encode executed FLOP/s as a fraction of matmul in the model's dtype, paired per repetition: "
        f"median {_r(frac['median'])} (IQR {_r(frac['q1'])}-{_r(frac['q3'])}, n={frac['n']}); of float32 matmul: "
        f"{res['executed_fraction_of_matmul_float32']:.3f}.",
        "",
    ]


def _threads(rec: dict) -> list[str]:
    res = rec["results"]["sentences"]
    raw = res["timing_raw"]
    base = f"threads={res['thread_counts'][0]}"
    lines = ["## torch threads on this shared machine", *_header(rec),
             "| threads | median wall s | median CPU s | wall ratio vs 1 thread | CPU ratio vs 1 thread |", "|---|---|---|---|---|"]
    for n in res["thread_counts"]:
        v = f"threads={n}"
        lines.append(
            f"| {n} | {res['summary']['wall_s'][v]['median']:.3f} | {res['summary']['cpu_s'][v]['median']:.3f} | "
            f"{_ratio(raw, 'wall_s', v, base)} | {_ratio(raw, 'cpu_s', v, base)} |"
        )
    return lines + [""]


def _load_suite(rec: dict) -> list[str]:
    res = rec["results"]
    lines = ["## Model load and peak memory", *_header(rec),
             "Each row is a fresh subprocess (`python -m tp_rag_eval.bench.child`).", "",
             "Seconds per phase, wall (and process CPU where recorded).", "",
             "| run | dtype | import | assemble GGUF | convert | tokenizer | model | load_model | Encoder() | ready (from interpreter start) | RSS after load MB | peak RSS load MB | peak RSS encode MB (+ over before) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    runs = ([res["first_load"]] if "first_load" in res else []) + res["runs"]
    for run in runs:
        ph = run["phases_s"]
        cp = run.get("phases_cpu_s", {})

        def cell(key, digits=1):
            wall = _r(ph.get(key), digits)
            return wall if key not in cp else f"{wall} ({_r(cp[key], digits)})"

        ready = _r(run["total_to_ready_s"], 1)
        if "total_to_ready_cpu_s" in run:
            ready += f" ({_r(run['total_to_ready_cpu_s'], 1)})"
        enc = run.get("peak_rss_encode_mb")
        enc_cell = "n/a" if enc is None else f"{enc:.0f} (+{run['peak_rss_encode_increase_mb']:.0f})"
        lines.append(
            f"| {run['kind']} | {run['dtype']} | {cell('import')} | {cell('assemble_gguf')} | "
            f"{cell('convert')} | {cell('tokenizer')} | {cell('model')} | "
            f"{cell('load_model')} | {cell('encoder_init', 2)} | "
            f"{ready} | "
            f"{run['rss_after_load_mb']:.0f} | {run['peak_rss_load_mb']:.0f} | "
            f"{enc_cell} |"
        )
    if "first_over_cached_total_to_ready" in res:
        lines += ["", f"First load / cached load (time to a ready Encoder, same dtype): {res['first_over_cached_total_to_ready']:.1f}x wall"
                  + (f", {res['first_over_cached_total_to_ready_cpu']:.1f}x CPU." if "first_over_cached_total_to_ready_cpu" in res else ".")]
    return lines + [""]


def _construct(rec: dict) -> list[str]:
    res = rec["results"]["bundled"]
    w, c = res["summary"]["wall_s"], res["summary"]["cpu_s"]
    alt = res["alternative_vs_current"]
    lines = ["## Encoder construction (PST mean vector)", *_header(rec),
             f"`Encoder(config, loaded=...)` on an already loaded model (vocab {res['vocab']:,} x {res['hidden']}, {res['dtype']}).", "",
             "| variant | median wall s | median CPU s |", "|---|---|---|"]
    for k in w:
        lines.append(f"| {k} | {w[k]['median']:.3f} | {c[k]['median']:.3f} |")
    lines += ["", f"Alternative vs current PST vector: max |diff| {alt['max_abs_diff']:.2e} (values up to "
              f"{alt['max_abs_value']:.3g}), cosine {alt['cosine']:.6f}.", ""]
    return lines


def _tokenizer(rec: dict) -> list[str]:
    res = rec["results"]["bundled"]
    raw = res["timing_raw"]
    base = "AutoTokenizer.from_pretrained"
    lines = ["## Tokenizer load", *_header(rec),
             f"`tokenizer.json` of {res['tokenizer_json_mb']:.0f} MB; same ids from AutoTokenizer and the plain fast "
             f"tokenizer on probe prompts: {res['same_ids_auto_vs_fast']}.", "",
             "| variant | median wall s | median CPU s | CPU ratio vs AutoTokenizer |", "|---|---|---|---|"]
    for k in raw["wall_s"]:
        lines.append(f"| {k} | {res['summary']['wall_s'][k]['median']:.2f} | {res['summary']['cpu_s'][k]['median']:.2f} | "
                     f"{_ratio(raw, 'cpu_s', k, base)} |")
    return lines + [""]


def _baseline(rec: dict) -> list[str]:
    lines = ["## tp-rag vs the reference code's path (full causal-LM forward, output_hidden_states)",
             *_header(rec),
             "Same rows, inputs and TP hooks on both paths (same vectors: max |diff| below); the reference "
             "runs every layer, the final norm and the LM head. Speed-up = reference time / tp-rag time "
             "(paired, [95% interval]). Achieved rate = tp-rag's executed model FLOPs per second against "
             "a dense matmul in the same dtype, interleaved in the same run.", "",
             "| texts | dtype | rows x tokens | output layer | speed-up CPU | speed-up wall | tp-rag GFLOP/s (CPU) | matmul GFLOP/s | fraction of peak | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, res in rec["results"].items():
        raw = res["timing_raw"]
        rates = res["rates"]["cpu_s"]
        pad = res["padding"]
        lines.append(
            f"| {name} | {res['dtype']} | {pad['rows']} x {pad['mean_row_tokens']:.0f} | "
            f"{res['output_layer']}/{res['num_layers']} | {_ratio(raw, 'cpu_s', 'reference', 'tp_rag')} | "
            f"{_ratio(raw, 'wall_s', 'reference', 'tp_rag')} | {rates['tp_rag_executed_gflop_per_s']:.1f} | "
            f"{rates['matmul_peak_gflop_per_s']:.1f} | {rates['tp_rag_fraction_of_peak']:.2f} | "
            f"{res['vectors']['max_abs_diff']:.1e} |")
    return lines + [""]


def _token_budget(rec: dict) -> list[str]:
    lines = ["## Token-budget batching vs a fixed row count", *_header(rec)]
    for name, res in rec["results"].items():
        raw = res["timing_raw"]
        base = next(k for k in raw["cpu_s"] if k.startswith("rows="))
        rt = res["row_tokens"]
        lines += [f"{name}: {res['n_texts']} texts, {rt['min']}..{rt['max']} tokens per row (mean {rt['mean']:.0f}).", "",
                  "| variant | batches | padded / real tokens | time / fixed rows, CPU | wall | max abs diff |",
                  "|---|---|---|---|---|---|"]
        for k in raw["cpu_s"]:
            sh = res["batch_shapes"][k]
            lines.append(f"| {k} | {sh['batches']} | {sh['padded_tokens']} / {sh['real_tokens']} | "
                         f"{_ratio(raw, 'cpu_s', k, base)} | {_ratio(raw, 'wall_s', k, base)} | "
                         f"{res['max_abs_diff_vs_' + base][k]:.1e} |")
    return lines + [""]


def _prefix_cache(rec: dict) -> list[str]:
    res = rec["results"]["sentences"]
    lines = ["## Template prefix cache vs whole rows", *_header(rec),
             f"{res['n_texts']} STS-B sentences per call; the prefix is what every row of a template "
             "shares before the text (before the placeholder with TP).", "",
             "| prompt | templates | prefix / template tokens | time / whole rows, CPU | wall | max abs diff "
             "| shipped CPU time vs the first row |",
             "|---|---|---|---|---|---|---|"]
    for prompt, r in res["per_prompt"].items():
        raw = r["timing_raw"]
        tokens = f"{sum(r['prefix_tokens'])} / {sum(r['template_tokens'])}"
        versus = next((f"{v:.2f}x" for k, v in r.items() if k.startswith("cpu_vs_")), "")
        lines.append(f"| {prompt} | {r['templates']} | {tokens} | "
                     f"{_ratio(raw, 'cpu_s', 'prefix_cache', 'whole_rows')} | "
                     f"{_ratio(raw, 'wall_s', 'prefix_cache', 'whole_rows')} | "
                     f"{r['vectors']['max_abs_diff']:.1e} | {versus} |")
    return lines + [""]


def _startup(rec: dict) -> list[str]:
    res = rec["results"]["bundled"]
    lines = ["## Start-up (fresh processes, cached model)", *_header(rec),
             "| command | median wall s | median CPU s | runs |", "|---|---|---|---|"]
    for k, cmd in res["commands"].items():
        lines.append(f"| `{cmd}` | {res['wall_s'][k]['median']:.2f} | {res['cpu_s'][k]['median']:.2f} | "
                     f"{res['wall_s'][k]['n']} |")
    return lines + [""]


SECTIONS = {
    "tp": _tp,
    "early-exit": _early_exit,
    "batching": _batching,
    "dtype": _dtype,
    "flops": _flops,
    "threads": _threads,
    "construct": _construct,
    "tokenizer": _tokenizer,
    "load": _load_suite,
    "baseline": _baseline,
    "token-budget": _token_budget,
    "prefix-cache": _prefix_cache,
    "startup": _startup,
}


def render(out_dir: Path | str) -> str:
    out_dir = Path(out_dir)
    parts = ["# Benchmark results (generated by `python -m tp_rag_eval.bench report`)", "",
             "Ratios: median over repetitions of the paired ratio (variants run back to back, "
             "order alternated), [bootstrap 95% interval of that median]. CPU = process CPU time "
             "(one torch thread: the work done, not the time spent waiting for a core).", ""]
    records = []
    for path in sorted(out_dir.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("suite") in SECTIONS:
            records.append((list(SECTIONS).index(rec["suite"]), path.name, rec))
    for _, name, rec in sorted(records, key=lambda x: (x[0], x[1])):
        section = SECTIONS[rec["suite"]](rec)
        section[0] += f" (`results/{name}`)"
        parts += section
    return "\n".join(parts)


def write_summary(out_dir: Path | str) -> Path:
    path = Path(out_dir) / "summary.md"
    path.write_text(render(out_dir))
    return path
