"""Renders the Helm chart with Helm's own engine (helm-python-sdk) into parsed manifests."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import helm_python
import yaml  # type: ignore[import-untyped]

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "rebeam"


_rendered: dict[str, list[dict[str, Any]]] = {}


def render(values: dict[str, Any] | None = None, *, name: str = "rebeam",
           namespace: str = "default", fresh: bool = False) -> list[dict[str, Any]]:
    """Every manifest the chart renders for ``values``, as a fresh install (a copy of an
    earlier rendering of the same values unless ``fresh``)."""
    key = json.dumps([values, name, namespace], sort_keys=True)
    if fresh or key not in _rendered:
        chart = helm_python.Chart.load(str(CHART))
        files = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
        docs: list[dict[str, Any]] = []
        for path, text in sorted(files.items()):
            if not path.endswith((".yaml", ".yml")):
                continue
            docs.extend(d for d in yaml.safe_load_all(text) if d)
        _rendered[key] = docs
    return copy.deepcopy(_rendered[key])


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """The manifests of ``kind`` (and ``name``)."""
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single manifest of ``kind`` (and ``name``)."""
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]
