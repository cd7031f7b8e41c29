#!/usr/bin/env python3
"""Turns benches/compare.sh's runs.jsonl into the ratio table (table.md, also printed) and a
chart of sentences/s against batch size (throughput.svg). Standard library only.

    python3 benches/report.py benches/results/runs.jsonl benches/results
"""
import json
import math
import os
import platform
import statistics
import sys

NAMES = {"headstream": "headstream", "headstream-int8": "headstream int8", "ort": "ONNX Runtime",
         "ort-int8": "ONNX Runtime int8", "st": "sentence-transformers"}
COLOURS = {"headstream": "#d62728", "headstream-int8": "#ff9896", "ort": "#1f77b4",
           "ort-int8": "#aec7e8", "st": "#2ca02c"}
ENGINES = ("headstream", "headstream-int8", "ort", "ort-int8", "st")


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def medians(runs):
    """{input: {batch: {engine: (median sentences/s, rounds)}}} over the encoder runs."""
    by = {}
    for r in runs:
        if "bench" in r or "engine" not in r:
            continue
        by.setdefault(r.get("file", r["input"]), {}).setdefault(r["batch_size"], {}).setdefault(r["engine"], []).append(r)
    out = {}
    for inp, batches in by.items():
        for batch, engines in batches.items():
            for engine, rs in engines.items():
                rate = statistics.median(x["sentences_per_s"] for x in rs)
                out.setdefault(inp, {}).setdefault(batch, {})[engine] = (rate, len(rs), rs)
    return out


def table(runs, med):
    threads = next((r.get("threads") for r in runs if r.get("engine") == "headstream"), "?")
    lines = [f"Measured on {cpu()}, {os.cpu_count()} vCPUs, {threads} threads per engine; "
             "medians of sentences/s over the rounds (engines alternated within each round).", ""]
    lines.append("| input | batch | headstream | headstream int8 | ONNX Runtime | ORT int8 | sentence-transformers "
                 "| vs ORT | int8 vs ORT int8 | vs ST |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for inp in sorted(med):
        for batch in sorted(med[inp]):
            e = med[inp][batch]
            cell = lambda k: f"{e[k][0]:.1f}" if k in e else "—"
            ratio = lambda a, b: f"{e[a][0] / e[b][0]:.2f}×" if a in e and b in e else "—"
            lines.append(f"| {inp_name(runs, inp)} | {batch} | {cell('headstream')} | {cell('headstream-int8')} | "
                         f"{cell('ort')} | {cell('ort-int8')} | {cell('st')} | {ratio('headstream', 'ort')} | "
                         f"{ratio('headstream-int8', 'ort-int8')} | {ratio('headstream', 'st')} |")
    lines.append("")
    # What follows the table: one paragraph each.
    notes = []
    for inp in sorted(med):
        one = med[inp].get(1)
        if not one:
            continue
        parts = []
        for engine in ENGINES:
            if engine in one:
                mean_ms = 1000.0 / one[engine][0]
                p50 = [r["latency_ms"]["p50"] for r in one[engine][2] if "latency_ms" in r]
                extra = f", p50 {statistics.median(p50):.1f} ms" if p50 else ""
                parts.append(f"{NAMES[engine]} {mean_ms:.1f} ms{extra}")
        notes.append(f"Batch 1 latency per sentence ({inp_name(runs, inp)}; mean = pass time / texts): "
                     + "; ".join(parts) + ".")
    roof = [r for r in runs if r.get("bench") == "roofline"]
    blas = [r for r in runs if r.get("bench") == "openblas_sgemm"]
    if roof:
        r = roof[-1]
        notes.append(f"Roofline (SST-2, batch 32): the encoder ran {r['gflops']} GFLOP/s "
                     f"({r['gflop_per_pass']} GFLOP per pass of {r['n_texts']} texts at their real token counts); "
                     f"sgemm 2048³ on the same kernels and threads: {r['sgemm_peak_gflops']} GFLOP/s"
                     + (f", OpenBLAS through numpy: {blas[-1]['gflops']} GFLOP/s" if blas else "")
                     + f" → **{100 * r['roofline_share']:.0f}%** of the sgemm rate"
                     + (f" ({100 * r['gflops'] / blas[-1]['gflops']:.0f}% of OpenBLAS's)." if blas else "."))
    heads = [r for r in runs if r.get("bench") == "heads"]
    if heads:
        h = heads[-1]
        notes.append(f"Heads: {h['heads']} linear heads cost {h['all_heads_us_per_message']} µs per message, "
                     f"{100 * h['all_heads_share_of_encoder']:.1f}% of the encoder's {h['encoder_us_per_message'] / 1000:.1f} ms; "
                     f"compile {h['compile_ms']} ms, cached load {h['cached_load_ms']} ms.")
    for p in (r for r in runs if r.get("bench") == "pipeline"):
        notes.append(f"Pipeline ({inp_name(runs, p['file'])}, {p['heads']} heads, JetStream with acks, results published): "
                     f"{p['pipeline_sentences_per_s']} sentences/s = **{p['pipeline_share_of_encoder']:.2f}×** the bare encoder's "
                     f"{p['encoder_sentences_per_s']}; at {p['latency_rate_per_s']} messages/s latency p50 {p['latency_ms']['p50']} ms, "
                     f"p99 {p['latency_ms']['p99']} ms; cold start {p['cold_start_s']} s; host RSS {p['host_rss_mib']} MiB "
                     f"(peak {p['host_peak_rss_mib']} MiB); {p['errors']} errors.")
    return "\n".join(lines) + "\n" + "\n\n".join(notes) + "\n"


def inp_name(runs, key):
    """A short dataset name for an input path: its directory (sst2/test.jsonl -> sst2)."""
    return os.path.basename(os.path.dirname(key)) or os.path.basename(key)


def svg(runs, med):
    panels = sorted(med)
    w, h, pad = 420, 300, 55
    width = w * len(panels)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h + 40}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{h + 40}" fill="white"/>']
    for i, inp in enumerate(panels):
        x0 = i * w
        batches = sorted(med[inp])
        top = max(v[0] for b in batches for v in med[inp][b].values()) * 1.1
        xs = {b: x0 + pad + 15 + (w - pad - 45) * (j / max(1, len(batches) - 1)) for j, b in enumerate(batches)}
        y = lambda v: h - 30 - (h - 60) * v / top
        out.append(f'<text x="{x0 + w / 2}" y="18" text-anchor="middle" font-weight="bold">'
                   f'{inp_name(runs, inp)}: sentences/s by batch size</text>')
        out.append(f'<line x1="{x0 + pad}" y1="{h - 30}" x2="{x0 + w - 20}" y2="{h - 30}" stroke="black"/>')
        out.append(f'<line x1="{x0 + pad}" y1="30" x2="{x0 + pad}" y2="{h - 30}" stroke="black"/>')
        step = 10 ** math.floor(math.log10(top / 4)) if top > 0 else 1
        step *= 5 if top / step > 20 else 2 if top / step > 8 else 1
        v = 0.0
        while v <= top:
            out.append(f'<line x1="{x0 + pad - 4}" y1="{y(v):.1f}" x2="{x0 + w - 20}" y2="{y(v):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{x0 + pad - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
            v += step
        for b in batches:
            out.append(f'<text x="{xs[b]:.1f}" y="{h - 14}" text-anchor="middle">{b}</text>')
        for engine in ENGINES:
            pts = [(xs[b], y(med[inp][b][engine][0])) for b in batches if engine in med[inp][b]]
            if not pts:
                continue
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{COLOURS[engine]}" stroke-width="2"/>')
            for px, py in pts:
                out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{COLOURS[engine]}"/>')
    for k, engine in enumerate(ENGINES):
        lx = 20 + k * 165
        out.append(f'<rect x="{lx}" y="{h + 16}" width="14" height="4" fill="{COLOURS[engine]}"/>')
        out.append(f'<text x="{lx + 20}" y="{h + 22}">{NAMES[engine]}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    runs = load(sys.argv[1])
    outdir = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(sys.argv[1])
    med = medians(runs)
    text = table(runs, med)
    with open(os.path.join(outdir, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(outdir, "throughput.svg"), "w") as f:
        f.write(svg(runs, med))
    print(text)


if __name__ == "__main__":
    main()
