"""The batch report: CSV, and a server-rendered HTML page with inline SVG charts (no JavaScript, no CDN).

Both are built from `selectors.batch_view`, the same data as `GET /api/agent/batches/<id>`.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from django.template.loader import render_to_string
from rest_framework.renderers import BaseRenderer

from apps.agent.models import Batch

CSV_COLUMNS = (
    "position",
    "job_id",
    "parent_id",
    "parent_purged",
    "status",
    "degraded",
    "latency_ms",
    "cost_usd",
    "model",
    "result_ids",
    "parent_status",
    "parent_degraded",
    "parent_latency_ms",
    "parent_cost_usd",
    "parent_model",
    "parent_result_ids",
    "jaccard",
    "results_changed",
    "order_changed",
    "added_ids",
    "removed_ids",
    "rank_changes",
    "degraded_change",
    "latency_delta_ms",
    "cost_delta_usd",
    "store_changed",
    "query",
)
# Fill colours as attributes (not only CSS), so that a chart saved on its own keeps them.
COLOURS = {"parent": "#b9b9b9", "rerun": "#2b6cb0"}
# Cells a spreadsheet would run as a formula (CSV injection): free text starting with these is quoted.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(
            f"{v['id']}:{v['parent_rank']}>{v['rank']}" if isinstance(v, dict) else str(v) for v in value
        )
    return str(value)


def _text(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def report_csv(*, view: dict[str, Any]) -> str:
    """One row per job of the batch, in batch order; comparison columns empty when not compared.

    Lists are space-separated; `rank_changes` reads `book_id:parent_rank>rank`.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for item in view["items"]:
        row = {**item, **(item["comparison"] or {})}
        row["query"] = _text(item["query"])
        row["model"] = _text(item["model"])
        if "parent_model" in row:
            row["parent_model"] = _text(row["parent_model"])
        writer.writerow([_cell(row.get(column)) for column in CSV_COLUMNS])
    return out.getvalue()


def _chart(items: list[dict[str, Any]], key: str, parent_key: str, unit: str) -> dict[str, Any]:
    """Bars of one value per item (re-run) next to the parent's, scaled into a fixed-size SVG."""
    width, height, left, top, bottom = 720, 160, 56, 10, 20
    plot_w, plot_h = width - left - 8, height - top - bottom
    values = []
    for item in items:
        parent = (item["comparison"] or {}).get(parent_key)
        values.append((item.get(key), parent))
    peak = max((v for pair in values for v in pair if v is not None), default=0) or 1
    slot = plot_w / max(len(items), 1)
    bars = []
    for index, (value, parent) in enumerate(values):
        x = left + index * slot
        for offset, amount, css, label in (
            (0.0, parent, "parent", "original"),
            (0.5, value, "rerun", "this batch"),
        ):
            if amount is None:
                continue
            bar_h = plot_h * amount / peak
            bars.append(
                {
                    "x": round(x + offset * slot, 2),
                    "y": round(top + plot_h - bar_h, 2),
                    "w": round(max(slot / 2 - 0.3, 0.4), 2),
                    "h": round(bar_h, 2),
                    "css": css,
                    "fill": COLOURS[css],
                    "title": f"#{index + 1} {label}: {amount:g} {unit}",
                }
            )
    return {
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "bottom": top + plot_h,
        "right": width - 8,
        "peak": f"{peak:g}",
        "unit": unit,
        "bars": bars,
        "empty": not bars,
    }


def report_html(*, batch: Batch, view: dict[str, Any]) -> str:
    """A self-contained page (inline CSS and SVG) for people: summary, two charts, one row per item."""
    items = view["items"]
    return render_to_string(
        "agent/batch_report.html",
        {
            "batch": batch,
            "view": view,
            "overrides": json.dumps(batch.overrides, ensure_ascii=False, sort_keys=True),
            "selection": json.dumps(batch.selection, ensure_ascii=False, sort_keys=True),
            "latency_chart": _chart(items, "latency_ms", "parent_latency_ms", "ms"),
            "cost_chart": _chart(items, "cost_usd", "parent_cost_usd", "USD"),
        },
    )


class _TextRenderer(BaseRenderer):
    """A report already rendered to text by this module: sent as UTF-8."""

    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data.encode("utf-8") if isinstance(data, str) else data


class CSVRenderer(_TextRenderer):
    media_type = "text/csv"
    format = "csv"


class HTMLRenderer(_TextRenderer):
    media_type = "text/html"
    format = "html"
