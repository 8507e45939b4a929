"""How svirtctl prints: tables sized to their content (as systemctl/machinectl do), reports, JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dbus_fast import Variant

LIST_COLUMNS = ("UUID", "NAME", "LEVEL", "PROFILE", "STATE")
LIST_FIELDS = tuple(c.lower() for c in LIST_COLUMNS)


def unwrap(value: Any) -> Any:
    """Variants -> plain Python values, recursively (for printing and --json)."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2)


def table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> list[str]:
    """Rows as lines, each column as wide as its widest cell (header included), columns two spaces
    apart; the last column is not padded, so no line ends in blanks."""
    lines = [list(header)] if header is not None else []
    lines += [list(r) for r in rows]
    if not lines:
        return []
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]


def list_lines(rows: Sequence[Sequence[str]], legend: bool) -> list[str]:
    """`svirtctl list`: the guests table; with the legend, a header and a count, as machinectl."""
    if not legend:
        return table(rows)
    if not rows:
        return ["No guests isolated."]
    count = f"{len(rows)} guest{'s' if len(rows) != 1 else ''} listed."
    return [*table(rows, LIST_COLUMNS), "", count]


def list_json(rows: Sequence[Sequence[str]]) -> list[dict[str, str]]:
    return [dict(zip(LIST_FIELDS, r, strict=True)) for r in rows]


def status_lines(props: dict[str, Any]) -> list[str]:
    return table([(f"{key}:", _text(props[key])) for key in sorted(props)])


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def report_lines(report: dict[str, Any]) -> list[str]:
    """`svirtctl query` / `isolate`: one guest's labels, state and resources."""
    lines = [
        f"guest      {report['name']} ({report['uuid']})",
        f"level      {report['level']}  (categories {', '.join(f'c{c}' for c in report['categories'])})",
        f"label      {report['label']}",
        f"image      {report['image_label']}",
        f"profile    {report['profile']}   state {report['state']}   origin {report['origin']}",
    ]
    if report.get("note"):
        lines.append(f"note       {report['note']}")
    lines += [f"isolation  {report.get('isolation', '')}", "resources"]
    resources = report["resources"]
    rows = table([(r["status"], r["class"], r["device"], r["path"]) for r in resources])
    status_width = max((len(r["status"]) for r in resources), default=0)
    pad = "  " + " " * status_width + "  "
    for r, row in zip(resources, rows, strict=True):
        lines.append("  " + row)
        if r["expected"]:
            lines.append(f"{pad}expected {r['expected']}")
            lines.append(f"{pad}actual   {r['actual'] or '(none)'}")
        if r["note"]:
            lines.append(f"{pad}{r['note']}")
    return lines


def verify_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        f"policy        {result['policy']}",
        f"guests        {result['guests']}   resources {result['resources']}   "
        f"ordered pairs {result['ordered_pairs']}   checks {result['checks']}",
        "isolation     " + ("OK: every guest is isolated from every other" if result["ok"] else
                            f"VIOLATED ({len(result['violations'])} findings)"),
    ]
    kinds = table([(v["kind"], v["message"]) for v in result["violations"]])
    return lines + [f"  {line}" for line in kinds]


def progress_line(label: str, fraction: float, done: int, total: int, state: str, width: int,
                  elapsed: float = 0.0) -> str:
    """A job's progress bar on one terminal line of `width` columns, e.g.
    `isolate web1  [#########...........]  45%  22,500/50,000 files`; the bar takes what the text leaves
    (none on a very narrow terminal), the label is shortened rather than the line wrapped. A job that
    counts nothing (a verify) says `working` and the seconds it has run, so the line still moves."""
    fraction = min(1.0, max(0.0, fraction))
    if total > 0:
        tail = f" {fraction * 100:3.0f}%  {done:,}/{total:,} files"
    else:
        tail = f"  {done:,} files" if done else "  working" + (f"  {elapsed:.0f} s" if elapsed >= 1 else "")
    if state == "cancelling":
        tail += "  (cancelling: rolling back)"
    room = max(0, width - 1)  # the last column: a terminal may wrap when it is written
    label = label if len(label) + len(tail) + 2 <= room else label[:max(0, room - len(tail) - 3)] + "…"
    bar_width = room - len(label) - len(tail) - 4
    if bar_width < 10 or total <= 0:
        return (label + tail)[:room]
    filled = int(bar_width * fraction)
    return f"{label}  [{'#' * filled}{'.' * (bar_width - filled)}]{tail}"[:room]
