"""Result tables of the benchmarks, as aligned plain text or as Markdown."""

from typing import List, Sequence

__all__ = ["format_table", "markdown_header", "markdown_row"]


def markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_header(header: Sequence[str]) -> List[str]:
    """The header row and the separator row under it."""
    return [markdown_row(header), "|" + "---|" * len(header)]


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool, left: int = 2
) -> List[str]:
    """The lines of a table. Plain text: every column as wide as its widest cell, the first
    ``left`` columns (names) left-aligned and the others (numbers) right-aligned."""
    if markdown:
        return markdown_header(header) + [markdown_row(row) for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    return [
        "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))
        )
        for line in [list(header)] + [list(r) for r in rows]
    ]
