#!/usr/bin/env python3
"""One JSON line per measured point for loadtest/compare.sh.

  compare_collect.py k6 DIR SERVER ROUND RC LOAD     a k6 fanout run of run.sh (fanout.json,
                                                    k6 output with the sb-window line, cpu.tsv)
  compare_collect.py rust DIR SERVER ROUND RC LOAD   the Rust driver's JSON lines (rust.jsonl)
"""
import json
import re
import sys


def interp(series, t):
    """CPU seconds at time t (ms) from [(ms, cpu)] sampled every 0.5 s."""
    prev = series[0]
    for cur in series:
        if cur[0] >= t:
            if cur[0] == prev[0]:
                return cur[1]
            return prev[1] + (cur[1] - prev[1]) * (t - prev[0]) / (cur[0] - prev[0])
        prev = cur
    return series[-1][1]


def k6(d, server, rnd, rc, load):
    summary = json.load(open(f"{d}/fanout.json"))["metrics"]
    text = open(f"{d}/fanout.k6.txt").read()
    m = re.search(r"sb-window (\d+) (\d+) (\d+)", text)
    start, end, expected = (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else (0, 0, 0)
    series = []
    for line in open(f"{d}/cpu.tsv"):
        parts = line.split()
        if len(parts) >= 2:
            series.append((int(parts[0]), float(parts[1])))
    lat = summary.get("sb_delivery_ms", {})
    received = summary.get("sb_deliveries_received", {}).get("count", 0)
    lost = summary.get("sb_deliveries_lost", {}).get("count", 0)
    secs = (end - start) / 1000 if end > start else None
    cpu = interp(series, end) - interp(series, start) if series and secs else None
    k6cpu = None
    if series:
        k6s = [(int(l.split()[0]), float(l.split()[2])) for l in open(f"{d}/cpu.tsv") if len(l.split()) >= 3]
        if k6s and secs:
            k6cpu = interp(k6s, end) - interp(k6s, start)
    run = json.load(open(f"{d}/run.json"))
    print(json.dumps({
        "tool": "k6", "server": server, "round": rnd, "exit_code": rc, "load_before": load,
        "offered_deliveries_per_s": expected / secs if secs else None,
        "deliveries_per_s": received / secs if secs else None,
        "expected": expected, "received": received, "lost": lost,
        "p50_ms": lat.get("med"), "p95_ms": lat.get("p(95)"), "p99_ms": lat.get("p(99)"), "max_ms": lat.get("max"),
        "server_cpu_us_per_delivery": 1e6 * cpu / received if cpu is not None and received else None,
        "k6_cpu_us_per_delivery": 1e6 * k6cpu / received if k6cpu is not None and received else None,
        "busy_pct_before": run.get("busy_pct_before"),
    }))


def rust(d, server, rnd, rc, load):
    for line in open(f"{d}/rust.jsonl"):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r.get("mode") != "fanout":
            continue
        lat = r.get("latency_ms") or {}
        print(json.dumps({
            "tool": "rust", "server": server, "round": rnd, "exit_code": rc, "load_before": load,
            "offered_deliveries_per_s": r.get("offered_deliveries_per_s"),
            "deliveries_per_s": r.get("deliveries_per_s"),
            "expected": r.get("expected_deliveries"), "received": r.get("received_deliveries"),
            "lost": r.get("lost_deliveries"),
            "p50_ms": lat.get("p50"), "p95_ms": lat.get("p95"), "p99_ms": lat.get("p99"), "max_ms": lat.get("max"),
            "server_cpu_us_per_delivery": r.get("server_cpu_us_per_delivery"),
            "driver_cpu_us_per_delivery": r.get("driver_cpu_us_per_delivery"),
            "machine_busy_pct": r.get("machine_busy_pct"),
        }))


if __name__ == "__main__":
    kind, d, server, rnd, rc, load = sys.argv[1:7]
    (k6 if kind == "k6" else rust)(d, server, int(rnd), int(rc), load)
