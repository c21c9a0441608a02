#!/usr/bin/env python3
"""A short Markdown table from k6's --summary-export JSON (and run.sh's run.json):
each metric that has thresholds, its value for each threshold, the threshold, met or not."""
import json
import re
import sys


def value(metric, expr):
    """The aggregate a threshold expression tests, e.g. 'p(95)<500' -> metric['p(95)']."""
    agg = re.match(r"\s*([a-z]+(?:\([0-9.]+\))?)", expr).group(1)
    if agg == "rate":
        return metric.get("value", metric.get("rate"))
    if agg == "count":
        return metric.get("count")
    return metric.get(agg)


def fmt(name, agg, v):
    if v is None:
        return "—"
    if agg == "rate":
        return f"{100 * v:.2f} %"
    if name.endswith("_ms") or name.endswith("duration"):
        return f"{v:.1f} ms"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.2f}"
    return f"{int(v):,}"


def main():
    summary = json.load(open(sys.argv[1]))
    run = json.load(open(sys.argv[2])) if len(sys.argv) > 2 else {}
    metrics = summary.get("metrics", {})
    title = f"k6 {run.get('scenario', '?')} ({run.get('size', '?')})"
    ok = run.get("exit_code") == 0
    print(f"### {title}: {'all thresholds met' if ok else 'THRESHOLD MISSED (exit %s)' % run.get('exit_code')}\n")
    print("| metric | value | threshold | met |")
    print("|---|---|---|---|")
    for name in sorted(metrics):
        m = metrics[name]
        for expr, failed in (m.get("thresholds") or {}).items():
            agg = re.match(r"\s*([a-z]+(?:\([0-9.]+\))?)", expr).group(1)
            print(f"| `{name}` | {fmt(name, agg, value(m, expr))} | `{expr}` | {'no' if failed else 'yes'} |")
    extra = []
    for name in ("sb_deliveries_received", "sb_seq_checked", "sb_send_acks", "sb_connects", "sb_typing_received",
                 "sb_read_receipts_received", "sb_reconnects", "sb_rest_calls_ok"):
        if name in metrics and "count" in metrics[name]:
            extra.append(f"{name} {int(metrics[name]['count']):,}")
    for name in ("sb_delivery_ms", "sb_send_ack_ms", "sb_connect_ms"):
        if name in metrics:
            m = metrics[name]
            extra.append(f"{name} p50 {m.get('med', 0):.1f} / p95 {m.get('p(95)', 0):.1f} / max {m.get('max', 0):.1f}")
    if extra:
        print("\n" + "; ".join(extra) + ".")
    if run:
        print(
            f"\n{run.get('seconds')} s, {run.get('mode')}; machine load {run.get('load_before')} before, "
            f"{run.get('load_after')} after ({run.get('busy_pct_before')} % busy before; busiest: "
            f"{run.get('top_processes_before', '').strip()}); CPU s: servers+Redis "
            f"{run.get('cpu_s', {}).get('servers_and_redis')}, k6 {run.get('cpu_s', {}).get('k6')}."
        )


if __name__ == "__main__":
    main()
