"""A small document model rendered twice: as one self-contained HTML page and as Markdown.

A document is a list of blocks: ``("h2", text)``, ``("p", text)``, ``("ul", [text])``,
``("table", header, rows, row colours | None[, caption])`` and
``("img", file name, caption, PNG bytes)``.
:func:`html_document` embeds images as base64 data URIs (no external resources);
:func:`markdown_document` links them as files in a folder next to the Markdown file.

The table helpers serve the commands too: :func:`md_table` writes a Markdown table and
:func:`text_table` a plain-text table aligned in columns, for the terminal.
"""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["Block", "html_document", "markdown_document", "md_table", "text_table"]


def _is_number(text: str) -> bool:
    try:
        float(text.split(" ", 1)[0].replace(",", "").replace("—", "0").removesuffix("%"))
    except ValueError:
        return False
    return True


def _numeric(rows: Sequence[Sequence[str]], width: int) -> list[bool]:
    return [i > 0 and all(_is_number(r[i]) for r in rows) for i in range(width)]


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("---:" if n else "---" for n in _numeric(rows, len(header))) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def text_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    min_widths: Sequence[int] = (),
    align: str = "",
) -> str:
    """A plain-text table for the terminal: the header, a rule of dashes, then the rows.

    Cells are separated by one space. Column ``i`` is as wide as its widest cell and at least
    ``min_widths[i]`` (0 past the end of ``min_widths``). ``align`` has one letter per column,
    ``l`` (left) or ``r`` (right); by default the first column is left-aligned and the others
    right-aligned. A row may have fewer cells than the header: it ends there, and its last cell
    (a note, say) may run past its column without widening it.

    Raises:
        ValueError: a row with more cells than the header, or an ``align`` of the wrong length.
    """
    n = len(header)
    align = align or "l" + "r" * (n - 1)
    if len(align) != n or set(align) - {"l", "r"}:
        raise ValueError(f"align must have one 'l' or 'r' per column ({n}), got {align!r}")
    mins = [*min_widths, *[0] * n]
    widths = [max(len(h), mins[i]) for i, h in enumerate(header)]
    for row in rows:
        if len(row) > n:
            raise ValueError(f"a row has {len(row)} cells, the header {n}: {list(row)}")
        for i, cell in enumerate(row if len(row) == n else row[:-1]):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return " ".join(
            cell.ljust(widths[i]) if align[i] == "l" else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        )

    head = line(header)
    return "\n".join([head, "-" * len(head), *map(line, rows)])


# The report's content is a list of blocks, rendered as HTML and as Markdown: ("h2", text),
# ("p", text), ("ul", [text]), ("table", header, rows, row colours | None[, caption]),
# ("img", file name, caption, PNG bytes). Table cells are text.
Block = tuple[Any, ...]

_CSS = """
body{margin:0;background:#f3f4f6;color:#1f2328;font:15px/1.5 system-ui,-apple-system,"Segoe UI",
Roboto,"Helvetica Neue",Arial,sans-serif}main{max-width:1180px;margin:0 auto;min-height:100vh;
padding:28px 36px 48px;background:#fff}h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;
margin:34px 0 8px;padding-bottom:4px;border-bottom:1px solid #d8dee4}p.meta{color:#656d76;
font-size:13px;margin:0 0 16px}li{margin:3px 0}.scroll{overflow-x:auto}table{border-collapse:
collapse;font-size:13.5px;margin:8px 0}th,td{padding:5px 10px;border-bottom:1px solid #e4e7eb;
vertical-align:top}th{background:#f3f4f6;text-align:left;font-weight:600;white-space:nowrap}
.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}tbody tr:hover{
background:#f8fafc}.dot{display:inline-block;width:10px;height:10px;border-radius:50%;
margin-right:7px}figure{margin:8px 0 0}figure img{max-width:100%;height:auto}figcaption{
color:#656d76;font-size:13px;margin:4px 0 0}caption{caption-side:top;text-align:left;
color:#656d76;font-size:13px;padding:0 0 4px}
"""


def html_document(blocks: Sequence[Block], title: str, meta: str) -> str:
    parts = [f"<h1>{escape(title)}</h1>", f'<p class="meta">{escape(meta)}</p>']
    for kind, *args in blocks:
        if kind in ("h2", "p"):
            parts.append(f"<{kind}>{escape(args[0])}</{kind}>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{escape(t)}</li>" for t in args[0]) + "</ul>")
        elif kind == "table":
            header, rows, colours, *caption = args
            cls = [' class="num"' if n else "" for n in _numeric(rows, len(header))]
            head = "".join(f"<th{c}>{escape(h)}</th>" for c, h in zip(cls, header, strict=True))
            body = []
            for i, row in enumerate(rows):
                cells = [f"<td{c}>{escape(v)}</td>" for c, v in zip(cls, row, strict=True)]
                if colours:
                    dot = f'<span class="dot" style="background:{escape(colours[i])}"></span>'
                    cells[0] = f"<td>{dot}{escape(row[0])}</td>"
                body.append("<tr>" + "".join(cells) + "</tr>")
            cap = f"<caption>{escape(caption[0])}</caption>" if caption and caption[0] else ""
            parts.append(
                f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table></div>"
            )
        elif kind == "img":
            _, caption, png = args
            src = "data:image/png;base64," + b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img src="{src}" alt="{escape(caption)}">'
                f"<figcaption>{escape(caption)}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
        + "\n".join(parts)
        + "\n</main></body></html>\n"
    )


def markdown_document(blocks: Sequence[Block], title: str, meta: str, files: str) -> str:
    parts = [f"# {title}", f"_{meta}_"]
    for kind, *args in blocks:
        if kind == "h2":
            parts.append(f"## {args[0]}")
        elif kind == "p":
            parts.append(args[0])
        elif kind == "ul":
            parts.append("\n".join(f"- {t}" for t in args[0]))
        elif kind == "table":
            caption = args[3] if len(args) > 3 and args[3] else ""
            parts.append((f"_{caption}_\n\n" if caption else "") + md_table(args[0], args[1]))
        elif kind == "img":
            parts.append(f"![{args[1]}]({files}/{args[0]})\n\n_{args[1]}_")
    return "\n\n".join(parts) + "\n"
