#!/usr/bin/env python3
"""Latency percentile curves (p50 … p99.9) per target from h2load per-request logs.

benches/proxy.sh calls it after the fixed-rate runs:

    plot.py OUT.png TITLE TARGET=LOG[,LOG…] …

Each LOG is an h2load `--log-file` (tab-separated: start µs, HTTP status, duration µs); the
rounds of one target are pooled, and only 2xx rows count. The x axis is the percentile on a
"nines" scale (50, 90, 99, 99.9 evenly spaced), the y axis latency in ms (log scale).
Exits 3 when matplotlib is missing, so the caller can say so and go on.
"""

import math
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed", file=sys.stderr)
    sys.exit(3)

LABELS = {
    "direct": "upstream direct (floor)",
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "envoy": "Envoy",
    "bare": "bare Pingora",
    "mecha": "Mecha",
}


def durations_ms(paths):
    out = []
    for path in paths:
        with open(path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and 200 <= int(parts[1]) < 300:
                    out.append(int(parts[2]) / 1000.0)
    out.sort()
    return out


def quantile(sorted_v, p):
    i = max(0, min(len(sorted_v) - 1, math.ceil(len(sorted_v) * p) - 1))
    return sorted_v[i]


def main():
    png, title, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
    # 50 % … 99.9 %, evenly spaced in "nines": x = -log10(1 - p)
    xs = [0.301 + i * (3.0 - 0.301) / 200 for i in range(201)]
    ps = [1 - 10 ** (-x) for x in xs]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for spec in specs:
        target, _, logs = spec.partition("=")
        v = durations_ms([p for p in logs.split(",") if p])
        if not v:
            continue
        ys = [quantile(v, p) for p in ps]
        style = {"linewidth": 2.4} if target == "mecha" else {"linewidth": 1.4}
        if target == "direct":
            style["linestyle"] = "--"
        ax.plot(xs, ys, label=f"{LABELS.get(target, target)} (n={len(v)})", **style)
    ticks = [(0.301, "p50"), (1, "p90"), (2, "p99"), (3, "p99.9")]
    ax.set_xticks([t for t, _ in ticks], [n for _, n in ticks])
    ax.set_xlim(0.301, 3.0)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_xlabel("percentile")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)


if __name__ == "__main__":
    main()
