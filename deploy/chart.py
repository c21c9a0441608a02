"""Renders helm/switchboard offline with the Helm SDK (helm-python-sdk) and parses the result.

Used by deploy/check.py and, through `python3 deploy/chart.py render …`, by the chart-to-process
test (deploy/test/chart-process.test.mjs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "switchboard"
RELEASE = "sb"
NAMESPACE = "switchboard"


def load_values(files: list[str | Path], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merges values files (and a last dict of overrides) the way `helm -f a -f b` does."""
    merged: dict[str, Any] = {}
    for f in files:
        merged = deep_merge(merged, yaml.safe_load(Path(f).read_text()) or {})
    if overrides:
        merged = deep_merge(merged, overrides)
    return merged


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def render(values: dict[str, Any], *, upgrade: bool = False) -> tuple[list[dict[str, Any]], str]:
    """Renders the chart; returns its objects (hooks included, empty templates dropped) and
    NOTES.txt. Raises helm_python.HelmError when the values or a template are refused."""
    chart = helm_python.Chart.load(CHART)
    manifests = chart.render(
        values, name=RELEASE, namespace=NAMESPACE, is_install=not upgrade, is_upgrade=upgrade
    )
    objects: list[dict[str, Any]] = []
    notes = ""
    for path in sorted(manifests):
        text = manifests[path]
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                raise ValueError(f"{path}: rendered a document that is not a Kubernetes object: {doc!r}")
            objects.append(doc)
    return objects, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="print the rendered objects as a JSON array")
    r.add_argument("-f", "--values", action="append", default=[], help="values file (repeatable)")
    r.add_argument("--set-json", default=None, help="a JSON object merged over the files")
    r.add_argument("--upgrade", action="store_true")
    args = parser.parse_args()
    values = load_values(args.values, json.loads(args.set_json) if args.set_json else None)
    objects, notes = render(values, upgrade=args.upgrade)
    json.dump({"objects": objects, "notes": notes}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
