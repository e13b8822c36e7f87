"""Render the page: one section per Current with a chart of the hourly counts and a table of windows.

Plain HTML with inline CSS and SVG: no script, nothing fetched from elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from html import escape
from urllib.parse import quote

from braze_currents_airflow.ui.windows import CurrentView, WindowView, hourly_totals

SENT, DROPPED, DEAD = "#2f855a", "#d69e2e", "#c53030"
STATE_COLOURS = {
    "success": "#2f855a",
    "failed": "#c53030",
    "running": "#2b6cb0",
    "queued": "#718096",
    "upstream_failed": "#dd6b20",
}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 16px 24px;
       color: #1a202c; background: #fff; font-size: 14px; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 6px; }
p.meta { color: #4a5568; margin: 0 0 8px; }
table { border-collapse: collapse; margin-top: 8px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e2e8f0; text-align: right; white-space: nowrap; }
th { background: #f7fafc; font-weight: 600; vertical-align: bottom; }
td.left, th.left { text-align: left; }
.state { display: inline-block; padding: 1px 8px; border-radius: 9px; color: #fff; font-size: 12px; }
.warn { color: #c53030; font-weight: 600; }
.muted { color: #a0aec0; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
a { color: #2b6cb0; }
"""


def _num(value: int) -> str:
    return f"{value:,}"


def _axis_top(peak: int) -> int:
    """Round the largest bar up to 1, 2, 2.5 or 5 times a power of ten, for readable axis labels."""
    scale = 1
    while True:
        for step in (1, 2, 2.5, 5):
            if peak <= step * scale:
                return int(step * scale)
        scale *= 10


def chart_svg(windows: Iterable[WindowView], *, width: int = 860, height: int = 200) -> str:
    """Return an SVG bar chart of events sent, dropped and dead-lettered per window hour."""
    rows = hourly_totals(windows)
    if not rows:
        return '<p class="muted">No reports yet, so nothing to chart.</p>'
    left, right, top, bottom = 64, 12, 10, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _axis_top(max(sent + dropped + dead for _, sent, dropped, dead in rows))
    slot = plot_w / len(rows)
    bar = max(2.0, min(40.0, slot * 0.7))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="Events sent and dropped per hour">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#a0aec0"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - fraction)
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#4a5568">'
            f"{_num(round(peak * fraction))}</text>"
        )
        if fraction:
            parts.append(
                f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#edf2f7"/>'
            )
    label_every = max(1, round(len(rows) / 12))
    for index, (hour, sent, dropped, dead) in enumerate(rows):
        x = left + slot * index + (slot - bar) / 2
        base = top + plot_h
        title = (
            f"{hour:%Y-%m-%d %H}:00 UTC: sent {_num(sent)}, dropped {_num(dropped)}, "
            f"dead-lettered {_num(dead)}"
        )
        parts.append(f'<g class="hour" data-hour="{hour:%Y-%m-%dT%H}"><title>{escape(title)}</title>')
        for value, colour in ((sent, SENT), (dropped, DROPPED), (dead, DEAD)):
            if value:
                h = max(2.0, plot_h * value / peak)  # a single dead letter must still show
                base -= h
                parts.append(
                    f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colour}"/>'
                )
        parts.append("</g>")
        if index % label_every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle" font-size="11" '
                f'fill="#4a5568">{hour:%H}:00</text>'
            )
    first, last = rows[0][0], rows[-1][0]
    span = f"{first:%Y-%m-%d}" if first.date() == last.date() else f"{first:%Y-%m-%d} to {last:%Y-%m-%d}"
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" font-size="11" '
        f'fill="#4a5568">window hour (UTC), {span}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _state(view: WindowView, airflow_base: str, dag_id: str) -> str:
    if view.run is None:
        return '<span class="muted">no run recorded</span>'
    state = view.run.state or "none"
    colour = STATE_COLOURS.get(state, "#718096")
    href = f"{airflow_base}/dags/{quote(dag_id, safe='')}/runs/{quote(view.run.run_id, safe='')}"
    runs = f' <span class="muted">({view.runs} runs)</span>' if view.runs > 1 else ""
    return (
        f'<a class="run" href="{escape(href)}" target="_top" title="{escape(view.run.run_id)}">'
        f'<span class="state" style="background:{colour}">{escape(state)}</span></a>{runs}'
    )


def _table(current: CurrentView, airflow_base: str) -> str:
    reasons = current.dropped_reasons
    late = current.has_late
    # (data-key, label); dropped reasons get a two-line label under a "dropped" line.
    columns = [("window", "window (UTC)"), ("run", "run"), ("files", "files"), ("events_read", "read")]
    columns += [(f"dropped:{reason}", f"dropped<br>{escape(reason.replace('_', ' '))}") for reason in reasons]
    columns += [("sent", "sent"), ("dead_lettered", "dead-lettered")]
    columns += [("late", "late files")] if late else []
    columns += [("batches", "batches"), ("balanced", "balanced")]
    cells = "".join(
        f'<th data-key="{escape(key)}" class="{"left" if i < 2 else ""}">{label}</th>'
        for i, (key, label) in enumerate(columns)
    )
    rows = [f"<thead><tr>{cells}</tr></thead><tbody>"]
    for view in current.windows:
        window = f"{view.window:%Y-%m-%d %H}:00"
        row = [
            f'<td class="left">{window}</td>',
            f'<td class="left">{_state(view, airflow_base, current.dag_id)}</td>',
        ]
        counts = view.counts
        if counts is None:
            note = escape(view.problem) if view.problem else "no report yet"
            row.append(f'<td class="left muted" colspan="{len(columns) - 2}">{note}</td>')
        else:
            row += [f"<td>{_num(counts['files'])}</td>", f"<td>{_num(counts['events_read'])}</td>"]
            row += [f"<td>{_num(counts['dropped'].get(reason, 0))}</td>" for reason in reasons]
            row.append(f"<td>{_num(counts['sent'])}</td>")
            dead = counts["dead_lettered"]
            row.append(f'<td class="{"warn" if dead else ""}">{_num(dead)}</td>')
            if late:
                row.append(f"<td>{_num(counts['late']) if 'late' in counts else ''}</td>")
            row.append(f"<td>{_num(counts['batches'])}</td>")
            row.append("<td>yes</td>" if view.balanced else '<td class="warn">no</td>')
        rows.append(f'<tr data-window="{view.window:%Y-%m-%dT%H}">{"".join(row)}</tr>')
    rows.append("</tbody>")
    return f'<table class="windows">{"".join(rows)}</table>'


def render_page(
    currents: list[CurrentView], *, airflow_base: str, generated_at: datetime, problem: str | None = None
) -> str:
    """Return the whole page.

    :param currents: the Currents the user may read, in config order.
    :param airflow_base: the Airflow UI's base path, for links to runs.
    :param generated_at: when the data was read.
    :param problem: a config error to show instead of the Currents.
    """
    body = [
        "<h1>Currents to Segment</h1>",
        f'<p class="meta">Recent windows of each Braze Current, from their reports and DAG runs; '
        f"read {generated_at:%Y-%m-%d %H:%M} UTC.</p>",
        f'<p class="legend"><span><i style="background:{SENT}"></i>sent</span>'
        f'<span><i style="background:{DROPPED}"></i>dropped</span>'
        f'<span><i style="background:{DEAD}"></i>dead-lettered</span></p>',
    ]
    if problem:
        body.append(f'<p class="warn">{escape(problem)}</p>')
    if not currents and not problem:
        body.append('<p class="muted">No Currents you may read are configured.</p>')
    for current in currents:
        dag_href = f"{airflow_base}/dags/{quote(current.dag_id, safe='')}"
        body.append(
            f'<section class="current" data-dag-id="{escape(current.dag_id)}">'
            f"<h2>{escape(current.name)} "
            f'<a href="{escape(dag_href)}" target="_top">{escape(current.dag_id)}</a></h2>'
            f'<p class="meta">Reports in {escape(current.dead_letters)}</p>'
        )
        if current.problem:
            body.append(f'<p class="warn">{escape(current.problem)}</p>')
        elif not current.windows:
            body.append('<p class="muted">No windows yet.</p>')
        else:
            body.append(chart_svg(current.windows))
            body.append(_table(current, airflow_base))
        body.append("</section>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>Currents to Segment</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    )
