"""Renders the Helm chart with Helm's own engine (helm-python-sdk) into parsed manifests."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "rebeam"


def render(values: dict[str, Any] | None = None, *, name: str = "rebeam",
           namespace: str = "default") -> list[dict[str, Any]]:
    """Every manifest the chart renders for ``values``, as a fresh install."""
    chart = helm_python.Chart.load(str(CHART))
    files = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(files.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """The manifests of ``kind`` (and ``name``)."""
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single manifest of ``kind`` (and ``name``)."""
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]
