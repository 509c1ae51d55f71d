"""Helpers that turn flywheel reports into Dagster UI metadata."""

from __future__ import annotations

import base64
import re
import sys

import dagster as dg


def say(context: dg.AssetExecutionContext, line: str) -> None:
    """A line for the run log and for whoever watches the step: the terminal of a run the command line
    executes in process, the step's captured output (compute logs) under the daemon."""
    context.log.info(line)
    print(f"  {context.asset_key.to_user_string()}: {line}", file=sys.stderr, flush=True)


def table_md(rows: list[dict], columns: list[str] | None = None, limit: int = 50) -> dg.MetadataValue:
    """A Markdown table of dict rows (first `limit` rows)."""
    if not rows:
        return dg.MetadataValue.md("_none_")
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows[:limit]:
        lines.append("| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |")
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more")
    return dg.MetadataValue.md("\n".join(lines))


def counts_md(counts: dict) -> dg.MetadataValue:
    return table_md([{"value": k, "count": v} for k, v in counts.items()])


def png_md(png: bytes, alt: str) -> dg.MetadataValue:
    """An inline PNG shown in the asset's metadata panel."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


_MARKDOWN = re.compile(r"([\\`*\[\]|<>~])")  # what Markdown (or HTML in it) would act on inside a cell
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _cell(v) -> str:
    """A table cell: numbers formatted, anything else (clip ids, camera names, reasons from the
    fleet) shown as text: Markdown and HTML characters escaped, control characters dropped."""
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, bool | int):
        return str(v)
    return _MARKDOWN.sub(r"\\\1", _CONTROL.sub(" ", str(v)))
