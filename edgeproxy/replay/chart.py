"""The distribution as a picture (`--chart FILE.svg|FILE.html`): hand-written SVG, no plotting library, no CDN.

One stacked bar per experience: the share of its requests that got each variant (grey: not in the experience).
Under an A/B test's bar, a thin bar shows the configured weights, so a skewed split is visible at a glance; with
`--against`, a second bar shows the distribution under the other snapshot.
"""

from __future__ import annotations

import html
import os
import secrets
from pathlib import Path

from edgeproxy.replay.aggregate import ExperienceResult, VariantCount

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
NOBODY = "#d5d5d5"
WIDTH = 960
LABEL = 300
BAR = 600
ROW = 22


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _segments(variants: list[VariantCount], nobody: VariantCount | None, x: float, y: float, height: float) -> str:
    total = sum(v.requests for v in variants) + (nobody.requests if nobody is not None else 0)
    parts = []
    cursor = x
    items = [(v, PALETTE[i % len(PALETTE)]) for i, v in enumerate(variants)]
    if nobody is not None:
        items.append((nobody, NOBODY))
    for v, color in items:
        if not total or not v.requests:
            continue
        w = BAR * v.requests / total
        label = f"{v.short_uid} {v.name}" if v.short_uid is not None else v.name
        share = 100.0 * v.requests / total
        parts.append(
            f'<rect x="{cursor:.2f}" y="{y:.2f}" width="{w:.2f}" height="{height:.2f}" fill="{color}">'
            f"<title>{_esc(label)}: {v.requests:,} requests ({share:.1f}%), {v.users:,} users</title></rect>"
        )
        if w > 34 and height >= 12:
            parts.append(
                f'<text x="{cursor + w / 2:.2f}" y="{y + height / 2 + 4:.2f}" text-anchor="middle" '
                f'font-size="11" fill="#fff">{_esc(v.short_uid or "none")} {share:.0f}%</text>'
            )
        cursor += w
    if not total:
        parts.append(
            f'<text x="{x + 4}" y="{y + height / 2 + 4:.2f}" font-size="11" fill="#888">no requests decided it</text>'
        )
    return "".join(parts)


def _weights(e: ExperienceResult, x: float, y: float) -> str:
    """The configured weights, scaled to the part of the bar that is in the test (so arms compare directly)."""
    total = sum(v.weight or 0 for v in e.variants)
    in_test = sum(v.requests for v in e.variants)
    if not total or not in_test or not e.requests:
        return ""
    span = BAR * in_test / e.requests
    parts = []
    cursor = x
    for i, v in enumerate(e.variants):
        w = span * (v.weight or 0) / total
        if w > 0:
            parts.append(
                f'<rect x="{cursor:.2f}" y="{y:.2f}" width="{w:.2f}" height="5" fill="{PALETTE[i % len(PALETTE)]}" '
                f'opacity="0.6"><title>configured weight of {_esc(v.short_uid or "")}: {(v.weight or 0) / 100:.2f}%'
                f"</title></rect>"
            )
        cursor += w
    return "".join(parts)


def render_svg(
    before: list[ExperienceResult], after: list[ExperienceResult] | None, *, title: str, subtitle: str
) -> str:
    after_by = {e.short_uid: e for e in after} if after is not None else {}
    rows: list[str] = []
    y = 64.0
    for e in before:
        per_row = 2 if after is not None else 1
        height = ROW * per_row + (8 if e.type == "AB_TEST" else 0) + 14
        rows.append(
            f'<text x="{LABEL - 8}" y="{y + 15:.2f}" text-anchor="end" font-size="12" font-weight="600">'
            f"{_esc(e.short_uid)} {_esc(e.name[:30])}</text>"
            f'<text x="{LABEL - 8}" y="{y + 29:.2f}" text-anchor="end" font-size="10" fill="#666">'
            f"{_esc(e.type)} {_esc(e.status)} · {e.requests:,} req · {e.users:,} users</text>"
        )
        rows.append(_segments(list(e.variants), e.not_in_experience, LABEL, y, ROW - 4))
        yy = y + ROW - 2
        if e.type == "AB_TEST":
            rows.append(_weights(e, LABEL, yy))
            yy += 8
        if after is not None:
            other = after_by.get(e.short_uid)
            rows.append(
                f'<text x="{LABEL + BAR + 6}" y="{y + 13:.2f}" font-size="10" fill="#666">rules</text>'
                f'<text x="{LABEL + BAR + 6}" y="{yy + 13:.2f}" font-size="10" fill="#666">against</text>'
            )
            if other is not None:
                rows.append(_segments(list(other.variants), other.not_in_experience, LABEL, yy, ROW - 4))
            else:
                rows.append(f'<text x="{LABEL + 4}" y="{yy + 13:.2f}" font-size="11" fill="#888">not live</text>')
        y += height
    svg_height = y + 24
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{svg_height:.0f}" '
        f'viewBox="0 0 {WIDTH} {svg_height:.0f}" font-family="system-ui, -apple-system, Segoe UI, sans-serif">'
        f'<rect width="100%" height="100%" fill="#fff"/>'
        f'<text x="16" y="26" font-size="16" font-weight="700">{_esc(title)}</text>'
        f'<text x="16" y="46" font-size="11" fill="#555">{_esc(subtitle)}</text>'
        + "".join(rows)
        + f'<text x="16" y="{svg_height - 8:.0f}" font-size="10" fill="#888">bars: share of requests per variant '
        "(grey: not in the experience); thin bars: configured A/B weights over the requests in the test</text></svg>\n"
    )


def render_html(svg: str, before: list[ExperienceResult], *, title: str) -> str:
    rows = []
    for e in before:
        for v in (*e.variants, e.not_in_experience):
            label = f"{v.short_uid} {v.name}" if v.short_uid is not None else v.name
            weight = f"{v.weight / 100:.2f}%" if v.weight is not None else ""
            share = f"{100.0 * v.requests / e.requests:.1f}%" if e.requests else ""
            rows.append(
                f"<tr><td>{_esc(e.short_uid)} {_esc(e.name)}</td><td>{_esc(label)}</td><td>{v.requests:,}</td>"
                f"<td>{share}</td><td>{v.users:,}</td><td>{weight}</td></tr>"
            )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}"
        "table{border-collapse:collapse;margin-top:16px}td,th{border:1px solid #ddd;padding:4px 8px;"
        "font-size:13px;text-align:right}td:first-child,td:nth-child(2),th{text-align:left}</style></head><body>\n"
        + svg
        + "<table><tr><th>experience</th><th>variant</th><th>requests</th><th>share</th><th>users</th>"
        "<th>weight</th></tr>" + "".join(rows) + "</table></body></html>\n"
    )


CHART_SUFFIXES = (".svg", ".html", ".htm")


def output_problem(option: str, path: str, suffixes: tuple[str, ...] = ()) -> str | None:
    """Why `path` cannot be written as `option`'s output, or None; checked before a replay starts so a typo does
    not cost the whole run. The folder must exist (it is not created)."""
    if suffixes and not path.lower().endswith(suffixes):
        return f"{option} {path}: name the file {' or '.join(suffixes[:2])} (the format follows the name)"
    target = Path(path)
    if target.is_dir():
        return f"{option} {path}: is a directory; give a file name"
    folder = target.parent
    if not folder.is_dir():
        return f"{option} {path}: the folder {str(folder)!r} does not exist; create it first"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{option} {path}: the folder {str(folder)!r} is not writable"
    return None


def write_output(path: str, data: bytes) -> None:
    """Write `path` atomically (a temporary file in the same folder, then rename), with the permissions of any
    new file (0666 less the umask, e.g. 0644): reports are meant to be read by others, CI artifacts included."""
    target = Path(path)
    temp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_chart(path: str, before: list[ExperienceResult], after: list[ExperienceResult] | None, *,
                title: str, subtitle: str) -> None:  # fmt: skip
    problem = output_problem("--chart", path, CHART_SUFFIXES)
    if problem:
        raise ValueError(problem)
    svg = render_svg(before, after, title=title, subtitle=subtitle)
    content = render_html(svg, before, title=title) if path.lower().endswith((".html", ".htm")) else svg
    write_output(path, content.encode("utf-8"))
