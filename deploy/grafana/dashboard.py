#!/usr/bin/env python3
"""Writes deploy/grafana/switchboard.json, the Switchboard cluster dashboard (provisioned by
deploy/compose.yaml, shipped as a ConfigMap by the Helm chart). Edit the panels here, run it,
commit the JSON. gateway/tests/node/observability.test.mjs evaluates every `expr` against a real
Prometheus scraping a real cluster."""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
N = 'instance=~"$node"'
R = "$__rate_interval"

ROWS = [
    ("Cluster", [
        ("stat", "Nodes up", [('sum(up{job=~"$job"})', "up")], "none"),
        ("stat", "Connections", [(f"sum(switchboard_connections{{{N}}})", "connections")], "none"),
        ("stat", "Live nodes seen by presence", [(f"max(switchboard_presence_nodes{{{N}}})", "nodes")], "none"),
        ("timeseries", "Connections by node", [(f"sum by (instance) (switchboard_connections{{{N}}})", "{{instance}}")], "none"),
        ("timeseries", "Connections by protocol and namespace", [(f"sum by (protocol, namespace) (switchboard_connections{{{N}}})", "{{protocol}} {{namespace}}")], "none"),
        ("timeseries", "Connects/s by protocol", [(f"sum by (protocol) (rate(switchboard_connects_total{{{N}}}[{R}]))", "{{protocol}}")], "ops"),
        ("timeseries", "Disconnects/s by reason", [(f"sum by (reason) (rate(switchboard_disconnects_total{{{N}}}[{R}]))", "{{reason}}")], "ops"),
        ("timeseries", "Handshakes refused/s by cause", [(f"sum by (protocol, cause) (rate(switchboard_auth_failures_total{{{N}}}[{R}]))", "{{protocol}} {{cause}}")], "ops"),
    ]),
    ("Events", [
        ("timeseries", "Inbound events/s", [(f"sum by (protocol, event) (rate(switchboard_inbound_events_total{{{N}}}[{R}]))", "{{protocol}} {{event}}")], "ops"),
        ("timeseries", "Refused events/s by code", [(f"sum by (code) (rate(switchboard_inbound_errors_total{{{N}}}[{R}]))", "{{code}}")], "ops"),
        ("timeseries", "Outbound frames/s", [(f"sum by (instance) (rate(switchboard_outbound_frames_total{{{N}}}[{R}]))", "{{instance}}")], "ops"),
        ("timeseries", "Outbound bytes/s", [(f"sum by (instance) (rate(switchboard_outbound_bytes_total{{{N}}}[{R}]))", "{{instance}}")], "Bps"),
        ("timeseries", "Event handling p99 by event", [(f"histogram_quantile(0.99, sum by (le, event) (rate(switchboard_event_duration_seconds_bucket{{{N}}}[{R}])))", "{{event}}")], "s"),
        ("timeseries", "Fan-out latency (publish to local write)", [
            (f"histogram_quantile(0.5, sum by (le, origin) (rate(switchboard_fanout_latency_seconds_bucket{{{N}}}[{R}])))", "p50 {{origin}}"),
            (f"histogram_quantile(0.99, sum by (le, origin) (rate(switchboard_fanout_latency_seconds_bucket{{{N}}}[{R}])))", "p99 {{origin}}"),
        ], "s"),
    ]),
    ("REST", [
        ("timeseries", "REST p99 by route", [(f"histogram_quantile(0.99, sum by (le, route) (rate(switchboard_http_request_duration_seconds_bucket{{{N}}}[{R}])))", "{{route}}")], "s"),
        ("timeseries", "REST requests/s by status", [(f"sum by (status) (rate(switchboard_http_request_duration_seconds_count{{{N}}}[{R}]))", "{{status}}")], "reqps"),
    ]),
    ("Bus and Redis", [
        ("timeseries", "Bus events/s by kind", [
            (f"sum by (kind) (rate(switchboard_bus_published_total{{{N}}}[{R}]))", "published {{kind}}"),
            (f"sum by (kind) (rate(switchboard_bus_received_total{{{N}}}[{R}]))", "received {{kind}}"),
        ], "ops"),
        ("timeseries", "Bus lag p99 (publish to receipt)", [(f"histogram_quantile(0.99, sum by (le, instance) (rate(switchboard_bus_lag_seconds_bucket{{{N}}}[{R}])))", "{{instance}}")], "s"),
        ("timeseries", "Bus drops/s by reason", [(f"sum by (reason) (rate(switchboard_bus_dropped_total{{{N}}}[{R}]))", "{{reason}}")], "ops"),
        ("timeseries", "Subscribed topics", [(f"sum by (instance) (switchboard_bus_subscribed_topics{{{N}}})", "{{instance}}")], "none"),
        ("timeseries", "Redis connected", [(f"min by (instance, client) (switchboard_redis_connected{{{N}}})", "{{instance}} {{client}}")], "none"),
        ("timeseries", "Redis command p99", [(f"histogram_quantile(0.99, sum by (le, command) (rate(switchboard_redis_command_duration_seconds_bucket{{{N}}}[{R}])))", "{{command}}")], "s"),
        ("timeseries", "Resubscribes and recovered messages", [
            (f"sum by (instance) (increase(switchboard_bus_resubscribes_total{{{N}}}[{R}]))", "resubscribes {{instance}}"),
            (f"sum by (instance) (increase(switchboard_bus_recovered_total{{{N}}}[{R}]))", "recovered {{instance}}"),
        ], "none"),
    ]),
    ("Database", [
        ("timeseries", "Store p99 by operation", [(f"histogram_quantile(0.99, sum by (le, operation) (rate(switchboard_store_operation_duration_seconds_bucket{{{N}}}[{R}])))", "{{operation}}")], "s"),
        ("timeseries", "Store calls/s by result", [(f"sum by (result) (rate(switchboard_store_operation_duration_seconds_count{{{N}}}[{R}]))", "{{result}}")], "ops"),
        ("timeseries", "Breaker open", [(f"max by (instance, store) (switchboard_store_breaker_open{{{N}}})", "{{instance}} {{store}}")], "none"),
        ("timeseries", "Group-commit batch size", [
            (f"histogram_quantile(0.5, sum by (le) (rate(switchboard_store_append_batch_size_bucket{{{N}}}[{R}])))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(switchboard_store_append_batch_size_bucket{{{N}}}[{R}])))", "p99"),
        ], "none"),
    ]),
    ("Slow consumers, drops, presence", [
        ("timeseries", "Slow-consumer closes/s", [(f"sum by (instance) (rate(switchboard_disconnects_total{{reason=\"slow_consumer\",{N}}}[{R}]))", "{{instance}}")], "ops"),
        ("timeseries", "Dropped frames/s", [(f"sum by (instance) (rate(switchboard_outbound_dropped_total{{{N}}}[{R}]))", "{{instance}}")], "ops"),
        ("timeseries", "Presence heartbeat age", [(f"max by (instance) (switchboard_presence_heartbeat_age_seconds{{{N}}})", "{{instance}}")], "s"),
        ("timeseries", "Presence reaps", [
            (f"sum(increase(switchboard_presence_reaped_total{{{N}}}[{R}]))", "connections"),
            (f"sum(increase(switchboard_presence_reaped_nodes_total{{{N}}}[{R}]))", "nodes"),
        ], "none"),
    ]),
    ("Processes", [
        ("timeseries", "CPU by node", [(f'sum by (instance) (rate(process_cpu_seconds_total{{job=~"$job",{N}}}[{R}]))', "{{instance}}")], "percentunit"),
        ("timeseries", "RSS by node", [(f'sum by (instance) (process_resident_memory_bytes{{job=~"$job",{N}}})', "{{instance}}")], "bytes"),
        ("timeseries", "Open fds and threads", [
            (f'sum by (instance) (process_open_fds{{job=~"$job",{N}}})', "fds {{instance}}"),
            (f'sum by (instance) (process_threads{{job=~"$job",{N}}})', "threads {{instance}}"),
        ], "none"),
        ("table", "Versions", [(f"switchboard_build_info{{{N}}}", "{{instance}} {{version}} {{commit}}")], "none"),
    ]),
]


def panel(pid, kind, title, targets, unit, x, y, w, h):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend,
             **({"instant": True, "format": "table"} if kind == "table" else {})}
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    return p


def dashboard():
    panels, pid, y = [], 1, 0
    for row_title, items in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        pid, y, x = pid + 1, y + 1, 0
        for kind, title, targets, unit in items:
            w, h = (8, 4) if kind == "stat" else (12, 8)
            if x + w > 24:
                x, y = 0, y + h_last
            panels.append(panel(pid, kind, title, targets, unit, x, y, w, h))
            pid, x, h_last = pid + 1, x + w, h
        y += h_last
    var = lambda name, label, query: {  # noqa: E731
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": name},
        "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [],
    }
    return {
        "uid": "switchboard-cluster",
        "title": "Switchboard cluster",
        "description": "Is it healthy, is it slow, where, why: docs/observability.md",
        "tags": ["switchboard"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {"list": []},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {"text": "Prometheus", "value": "prometheus"}, "options": [], "refresh": 1, "hide": 0},
            var("job", "Job", "label_values(switchboard_build_info, job)"),
            var("node", "Node", 'label_values(switchboard_build_info{job=~"$job"}, instance)'),
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    text = json.dumps(dashboard(), indent=2) + "\n"
    (HERE / "switchboard.json").write_text(text)
    # The chart can only read files inside it.
    (HERE.parent.parent / "helm" / "switchboard" / "dashboards" / "switchboard.json").write_text(text)
