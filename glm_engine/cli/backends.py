"""``glm-engine backends``: every known backend, whether it runs here (and why not), its devices and abilities."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from glm_engine.backends.base import Backend, dtype_name
from glm_engine.backends.registry import REGISTRY


class ListFormat(str, Enum):
    table = "table"
    json = "json"


def _gib(num_bytes: int | None) -> str:
    return "" if num_bytes is None else f"{num_bytes / 2**30:.1f} GiB"


def _memory(device: dict[str, Any]) -> str:
    """``"61.2 / 79.1 GiB free"`` when the backend knows the free memory, else the total."""
    total, free = device["memory_bytes"], device["free_memory_bytes"]
    if total is not None and free is not None:
        return f"{free / 2**30:.1f} / {total / 2**30:.1f} GiB free"
    return _gib(total)


def describe_backend(backend: Backend) -> dict[str, Any]:
    """Everything ``backends`` shows about one backend, as plain data."""
    verdict = backend.availability()
    devices = backend.devices() if verdict else []
    return {
        "name": backend.name,
        "kind": backend.kind.value,
        "source": REGISTRY.source(backend.name),
        "available": verdict.ok,
        "reason": verdict.reason,
        "devices": [
            {
                "index": d.index,
                "name": d.name,
                "memory_bytes": d.total_memory_bytes,
                "free_memory_bytes": d.free_memory_bytes,
                "capability": d.capability,
                "detail": d.detail,
            }
            for d in devices
        ],
        "dtypes": [dtype_name(d) for d in backend.supported_dtypes()],
        "quant_formats": [f.value for f in backend.quant_formats()],
        "distributed_backend": backend.dist_backend,
    }


def backends(
    output: Annotated[ListFormat, typer.Option("--format", help="table for people, json for tools")] = ListFormat.table,
) -> None:
    """List every backend: available here or not (with the reason), devices, dtypes, quantization formats."""
    rows = [describe_backend(b) for b in REGISTRY.all()]
    if output is ListFormat.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="glm-engine backends")
    for column in ("backend", "kind", "available", "devices / reason", "dtypes", "quant", "collectives"):
        table.add_column(column, overflow="fold")
    for row in rows:
        if row["available"]:
            detail = (
                "\n".join(f"{d['index']}: {d['name']} {_memory(d)} {d['detail']}".strip() for d in row["devices"])
                or row["reason"]
            )
        else:
            detail = row["reason"]
        table.add_row(  # reasons are plain text: escaped, so "pip install 'glm-engine[onnx]'" keeps its [onnx]
            escape(row["name"] + ("" if row["source"] == "built-in" else f"\n({row['source']})")),
            row["kind"],
            "[green]yes[/green]" if row["available"] else "[red]no[/red]",
            escape(detail),
            ", ".join(row["dtypes"]),
            ", ".join(row["quant_formats"]) or "-",
            row["distributed_backend"],
        )
    Console(width=max(Console().width, 120)).print(table)
