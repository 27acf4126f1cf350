#!/usr/bin/env python3
"""Render req/s and p99 per target from one run of the bench harness (benches/harness/run.sh) as an SVG.

usage: benches/chart.py OUTDIR [TARGET...] > docs/benchmarks.svg

OUTDIR is a run.sh output directory (raw/r<round>_<workload>_<target>.json). Medians over
rounds, like the harness's own report. Plain SVG, no plotting library needed.
"""
import json
import os
import statistics
import sys

WORKLOADS = [("get", "GET 2 KB, 64 conns"), ("post", "POST 1 KB echo, 64 conns"),
             ("delay", "POST +20 ms, 256 conns"), ("sse", "SSE first event (ms)")]
COLORS = ["#8c8c8c", "#2b7bb9", "#d9822b", "#3a9e5f", "#7a4fb5", "#c23b3b", "#4fb5b0", "#b5a04f"]


def norm(d):
    if d is None:
        return None
    if "lat_us" in d:
        return d["rps"], d["lat_us"]["p99"] / 1e3
    if "ttfb_ms" in d:
        return d["ttfb_ms"]["p50"], d["ttfb_ms"]["p99"]
    return None


def load(out):
    data = {}
    for fn in os.listdir(os.path.join(out, "raw")):
        if not fn.startswith("r") or not fn.endswith(".json"):
            continue
        stem = fn[:-5]
        rnd, rest = stem.split("_", 1)
        wl, target = rest.split("_", 1)
        try:
            with open(os.path.join(out, "raw", fn)) as f:
                txt = f.read().strip()
            v = norm(json.loads(txt)) if txt else None
        except (OSError, ValueError):
            v = None
        if v:
            data.setdefault((wl, target), []).append(v)
    return {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in data.items()}


def main():
    out = sys.argv[1]
    med = load(out)
    targets = sys.argv[2:] or sorted({t for (_, t) in med})
    wls = [(w, label) for w, label in WORKLOADS if any((w, t) in med for t in targets)]
    panel_w, panel_h, pad = 300, 220, 40
    width = pad + len(wls) * (panel_w + pad)
    height = 2 * (panel_h + 70) + 60
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    rows = [("throughput (req/s; SSE: TTFB p50 ms, lower is better)", 0), ("p99 latency ms (SSE: TTFB p99), lower is better", 1)]
    for r, (title, idx) in enumerate(rows):
        y0 = 40 + r * (panel_h + 70)
        svg.append(f'<text x="{pad}" y="{y0 - 14}" font-size="13" font-weight="bold">{title}</text>')
        for c, (wl, label) in enumerate(wls):
            x0 = pad + c * (panel_w + pad)
            vals = [(t, med.get((wl, t), (None, None))[idx]) for t in targets]
            top = max([v for _, v in vals if v] or [1]) * 1.15
            svg.append(f'<text x="{x0}" y="{y0 + 4}" font-weight="bold">{label}</text>')
            svg.append(f'<line x1="{x0}" y1="{y0 + panel_h}" x2="{x0 + panel_w}" y2="{y0 + panel_h}" stroke="#444"/>')
            bw = panel_w / max(1, len(vals)) * 0.7
            for i, (t, v) in enumerate(vals):
                bx = x0 + i * panel_w / len(vals) + 4
                if v is None:
                    continue
                h = (panel_h - 20) * v / top
                svg.append(f'<rect x="{bx:.1f}" y="{y0 + panel_h - h:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="{COLORS[i % len(COLORS)]}"/>')
                txt = f"{v:,.0f}" if v >= 100 else f"{v:.2f}"
                svg.append(f'<text x="{bx + bw / 2:.1f}" y="{y0 + panel_h - h - 3:.1f}" text-anchor="middle" font-size="9">{txt}</text>')
                svg.append(f'<text x="{bx + bw / 2:.1f}" y="{y0 + panel_h + 12}" text-anchor="middle" font-size="9">{t}</text>')
    svg.append(f'<text x="{pad}" y="{height - 12}" fill="#555">medians over rounds of one run of benches/load.sh ({os.path.basename(out.rstrip("/"))}); proxies pinned to one core</text>')
    svg.append("</svg>")
    print("\n".join(svg))


if __name__ == "__main__":
    main()
