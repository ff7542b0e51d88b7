"""Render records on stdout as a table, JSON or CSV (data on stdout; logs go to stderr)."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

Format = Literal["table", "json", "csv"]
FORMATS: tuple[str, ...] = get_args(Format)
SUMMARY_FORMATS: tuple[str, ...] = ("table", "json")  # one record (a run's summary): CSV adds nothing


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    return value


def _is_float(value: Any) -> bool:
    """A Python or numpy float; numpy is not imported for it (no numpy value exists unless numpy was imported),
    so that printing a stored list costs no numpy import."""
    numpy = sys.modules.get("numpy")
    return isinstance(value, float) or (numpy is not None and isinstance(value, numpy.floating))


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float (numpy's too) replaced by None, so that ``json.dumps`` writes
    valid JSON (``null``) where it would write ``NaN``, which no strict JSON reader accepts."""
    if _is_float(value):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def render(rows: Sequence[Mapping[str, Any]] | Mapping[str, Any], fmt: str, title: str | None = None,
           columns: Sequence[str] = ()) -> str:
    """Format ``rows`` (a list of records, or one record) as ``table``, ``json`` or ``csv`` text.

    JSON keeps the exact structure given (nested dicts allowed), NaN and infinities written as null; table and CSV flatten one level. ``columns`` come
    first (and are the header of an empty result, so a CSV reader still finds its columns).
    """
    if fmt == "json":
        return json.dumps(json_safe(rows), indent=2, default=str, allow_nan=False)
    records = [rows] if isinstance(rows, Mapping) else list(rows)
    columns = list(columns)
    for record in records:
        columns.extend(k for k in record if k not in columns)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({k: _plain(v) for k, v in record.items()})
        return buffer.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for record in records:
        table.add_row(*("" if record.get(c) is None else str(_plain(record.get(c))) for c in columns))
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(table)
    return console.file.getvalue().rstrip("\n")  # type: ignore[attr-defined]
