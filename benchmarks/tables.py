"""Markdown tables of the engine and pod benchmarks' JSON results, written once: the scripts
print them (benchmarks/engine_throughput.py, benchmarks/pipeline_rate.py) and the GPU check's
report (benchmarks/gpu_report.py) puts them on its page."""

from __future__ import annotations

from typing import Any

TO_BEAT = 800.0  # images/s: published FP16 TensorRT-class estimates for ViT-L/14 at 336 on an H100/H200


def engine_table(engine: dict[str, Any]) -> list[str]:
    rows = engine["rows"]
    base = rows[0]["images_per_s"]
    lines = [f"Engine: random {engine['architecture']['depth']}-block width-{engine['architecture']['width']} model "
             f"({engine['model']}), {engine['images']} crops ({engine['distinct_crops']} distinct: real and generated), "
             f"device {engine['device']}; drift against the first row; of peak: {engine['peak_tflops'] or '-'} TFLOP/s "
             "at 382 GFLOP an image.", "",
             "| precision | batch | mode | images/s | ms per batch | vs first row | max \\|Δlogit\\| | decision flips | of peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['fraction_of_peak']:.1%}" if "fraction_of_peak" in r else "-"
        lines.append(f"| {r['precision']} | {r['batch']} | {r['mode']} | {r['images_per_s']:,.1f} | {r['ms_per_batch']:.2f} | "
                     f"{r['images_per_s'] / base:.2f}x | {r.get('max_abs_logit_diff_vs_baseline', 0):.2e} | "
                     f"{r.get('decision_flips', 0)} | {peak} |")
    best = max(rows, key=lambda r: r["images_per_s"])
    lines += ["", f"Best: {best['images_per_s']:,.0f} images/s ({best['precision']} batch {best['batch']} {best['mode']})"
              + (f"; the figure to beat, {TO_BEAT:,.0f}/s, is {'beaten' if best['images_per_s'] > TO_BEAT else 'not reached'}."
                 if "fraction_of_peak" in best else ".")]
    kernels = engine.get("kernels")
    if kernels:
        kinds = ", ".join(f"{kind} {ms:.2f} ms" for kind, ms in sorted(kernels["ms_per_batch_by_kind"].items()))
        extra = "; ".join(f"{key.replace('_', ' ')} {value:.3g}" for key, value in kernels.items()
                          if key not in ("config", "ms_per_batch_by_kind"))
        lines += ["", f"Where the time of {kernels['config']} goes (self time per batch by kind, torch.profiler): {kinds}"
                  + (f"; {extra}" if extra else "") + "."]
    return lines


def pipeline_table(pipeline: dict[str, Any]) -> list[str]:
    lines = [f"Pod: {pipeline['setup']}.", "",
             "| configuration | processes | misses/s (flood) | ok | paced at | p50 ms | p99 ms | CPU ms per miss by class | CPU ms per miss "
             "| hits/s | CPU ms per hit | GPU busy flood / paced | GPU memory MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in pipeline["results"]:
        flood, paced, hits = r["flood"], r["paced"], r["hits"]
        by_class = ", ".join(f"{cls} {ms:.2f}" for cls, ms in r["cpu_ms_per_miss"].items())
        procs = ", ".join(f"{n} {cls}" for cls, n in sorted(r["processes"].items()))
        gpu = " / ".join(f"{u['mean_pct']:.0f}%" if u else "-" for u in (r["gpu_flood"], r["gpu_paced"]))
        memory = max((u["max_memory_mib"] for u in (r["gpu_flood"], r["gpu_paced"]) if u), default=None)
        lines.append(f"| {r['name']} | {procs} | {flood['rate']:,.0f} | {flood['ok']}/{flood['verdicts']} | {paced.get('offered_rate', r['paced_rate']):,.0f}/s | "
                     f"{paced['p50']:.0f} | {paced['p99']:.0f} | {by_class} | {sum(r['cpu_ms_per_miss'].values()):.2f} | "
                     f"{hits['rate']:,.0f} | {sum(r['cpu_ms_per_hit'].values()):.2f} | {gpu} | {memory if memory is not None else '-'} |")
    lines += ["", "exit statuses: " + ", ".join(f"{r['name']} {r['exit']}" for r in pipeline["results"])]
    return lines
