#!/usr/bin/env python3
"""compare.sh's report: medians per (tool, server, offered rate), the ratios peer ÷ Switchboard
measured in the same run, and a PNG of delivery p99 and server CPU per delivery against the
offered rate, Switchboard beside the Node Socket.IO peer.

  plot_compare.py results.jsonl compare.png > compare.md
"""
import json
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAMES = {"switchboard": "Switchboard", "peer": "Node socket.io 4.8 + redis-adapter"}


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def bucket(r):
    # runs at one nominal rate give slightly different measured offers: group by 2 digits
    v = r["offered_deliveries_per_s"] or 0
    return float(f"{v:.2g}")


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["tool"], r["server"], bucket(r))].append(r)
    table = {}
    for key, rs in groups.items():
        table[key] = {
            "runs": len(rs),
            "offered": median([r["offered_deliveries_per_s"] for r in rs]),
            "delivered": median([r["deliveries_per_s"] for r in rs]),
            "p50": median([r["p50_ms"] for r in rs]),
            "p99": median([r["p99_ms"] for r in rs]),
            "cpu": median([r["server_cpu_us_per_delivery"] for r in rs]),
            "lost": sum((r["lost"] or 0) for r in rs),
            "failed": sum(1 for r in rs if r.get("exit_code") not in (0, None)),
            "p99_runs": [r["p99_ms"] for r in rs],
            "cpu_runs": [r["server_cpu_us_per_delivery"] for r in rs],
        }

    def fmt(v, d=1):
        return "—" if v is None else f"{v:,.{d}f}"

    print("| tool | offered deliveries/s | server | runs | delivered/s | p50 ms | p99 ms (runs) | server CPU µs/delivery (runs) | lost | k6 thresholds missed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(table, key=lambda k: (k[0], k[2], k[1])):
        t = table[key]
        runs99 = " · ".join(fmt(x) for x in t["p99_runs"])
        runscpu = " · ".join(fmt(x, 2) for x in t["cpu_runs"])
        print(f"| {key[0]} | {fmt(t['offered'], 0)} | {key[1]} | {t['runs']} | {fmt(t['delivered'], 0)} | {fmt(t['p50'])} | "
              f"**{fmt(t['p99'])}** ({runs99}) | **{fmt(t['cpu'], 2)}** ({runscpu}) | {t['lost']} | "
              f"{t['failed'] if key[0] == 'k6' else '—'} |")
    print()
    print("| tool | offered deliveries/s | p99 peer ÷ Switchboard | CPU per delivery peer ÷ Switchboard |")
    print("|---|---|---|---|")
    for (tool, server, rate), t in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        if server != "switchboard":
            continue
        p = table.get((tool, "peer", rate))
        if not p:
            continue
        r99 = p["p99"] / t["p99"] if p["p99"] and t["p99"] else None
        rcpu = p["cpu"] / t["cpu"] if p["cpu"] and t["cpu"] else None
        print(f"| {tool} | {fmt(t['offered'], 0)} | {fmt(r99, 1)}× | {fmt(rcpu, 1)}× |")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {("switchboard", "k6"): ("tab:blue", "o", "-"), ("switchboard", "rust"): ("tab:blue", "s", "--"),
              ("peer", "k6"): ("tab:red", "o", "-"), ("peer", "rust"): ("tab:red", "s", "--")}
    for (server, tool), (color, marker, ls) in styles.items():
        pts = sorted((t["offered"], t["p99"], t["cpu"]) for (tl, sv, _), t in table.items() if tl == tool and sv == server and t["offered"])
        if not pts:
            continue
        label = f"{NAMES[server]} ({'k6' if tool == 'k6' else 'Rust driver'})"
        a1.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker, linestyle=ls, label=label)
        a2.plot([p[0] for p in pts if p[2]], [p[2] for p in pts if p[2]], color=color, marker=marker, linestyle=ls, label=label)
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("offered deliveries/s (2 nodes)")
    a1.set_ylabel("delivery latency p99 (ms)")
    a1.set_title("Delivery p99 vs offered rate")
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("offered deliveries/s (2 nodes)")
    a2.set_ylabel("server CPU per delivery (µs, both nodes + Redis)")
    a2.set_title("CPU per delivery vs offered rate")
    for a in (a1, a2):
        a.grid(True, which="both", alpha=0.3)
    a1.legend(fontsize=8)
    fig.suptitle("loadtest/compare.sh: medians; 2 nodes each, 1 core's worth per node, load drivers on the same 2 cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
