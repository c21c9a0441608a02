#!/usr/bin/env python3
"""Draws the dashboard's panels from the queries a test run saved, for docs/observability.md
(Grafana is not installable everywhere; this plots what each panel's query returned).

Usage: SWITCHBOARD_OBS_DUMP=/tmp/obs.json node --test gateway/tests/node/observability.test.mjs
       deploy/grafana/plot.py /tmp/obs.json docs/observability-dashboard.png
Needs matplotlib."""
import json
import math
import sys
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def legend(metric: dict) -> str:
    keep = {k: v for k, v in metric.items() if k not in ("__name__", "job")}
    return ", ".join(f"{k}={v}" for k, v in sorted(keep.items()))[:48] or "value"


def main() -> int:
    dump = json.load(open(sys.argv[1]))
    panels: "OrderedDict[str, list]" = OrderedDict()
    for q in dump:
        panels.setdefault(q["panel"], []).extend(q["result"])
    cols = 5
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.2, rows * 2.6), facecolor="#181b1f")
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, (title, series) in zip(axes.flat, panels.items()):
        ax.set_visible(True)
        ax.set_facecolor("#111217")
        ax.set_title(title, color="#d8d9da", fontsize=8, loc="left")
        ax.tick_params(colors="#8e8e8e", labelsize=6)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        t0 = min((float(s["values"][0][0]) for s in series if s["values"]), default=0)
        for s in series[:8]:
            xs = [float(t) - t0 for t, _ in s["values"]]
            ys = [float(v) if v not in ("NaN", "+Inf", "-Inf") else float("nan") for _, v in s["values"]]
            ax.plot(xs, ys, linewidth=1, label=legend(s["metric"]))
        if series:
            ax.legend(fontsize=5, loc="upper left", facecolor="#181b1f", labelcolor="#d8d9da", framealpha=0.6)
        else:
            ax.text(0.5, 0.5, "no data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("Switchboard cluster: each panel's query over a test run (x: seconds; rates over 5 s)", color="#d8d9da")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(sys.argv[2], dpi=80, facecolor=fig.get_facecolor())
    return 0


if __name__ == "__main__":
    sys.exit(main())
