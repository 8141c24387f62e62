"""Write the latest run of the bench into docs/performance.md, between two markers.

``make bench`` runs ``ingest.py`` and ``sweep.py`` with ``--results``, then this script,
which replaces what lies between ``BEGIN`` and ``END`` in docs/performance.md with the
machine, the load, the Python loop's speed and one table of every figure with its target
and verdict. Everything outside the markers is written by hand and kept as it is.

    .venv/bin/python bench/performance.py RESULTS.json... [--doc docs/performance.md]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from results import Figure, results_read  # bench/ is the script's own folder

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
BEGIN = "<!-- bench:begin (written by `make bench`: edit bench/performance.py, not this block) -->"
END = "<!-- bench:end -->"


def cell(text: str) -> str:
    """A Markdown table cell: pipes escaped."""
    return str(text).replace("|", "\\|")


def figure_rows(figures: list[Figure]) -> list[list[str]]:
    """One row per figure; an indented name (a detail of the figure above) is prefixed with
    the short name of its parent (up to a parenthesis, a comma or its p50), so that every row reads on its own."""
    rows = []
    parent = ""
    for figure in figures:
        name = figure.name
        if name.startswith(" "):
            name = f"{parent}: {name.strip()}" if parent else name.strip()
        else:
            parent = re.split(r" \(|,| p50", name)[0]  # its short name
        rows.append([name, figure.value, figure.target, figure.verdict])
    return rows


def markdown_table(rows: list[list[str]]) -> list[str]:
    """A header row then the rows, as Markdown."""
    header, *body = rows
    lines = ["| " + " | ".join(cell(c) for c in header) + " |"]
    lines.append("| " + " | ".join("---" for _ in header) + " |")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    return lines


def machine_line(document: dict[str, Any]) -> str:
    facts = document["facts"]
    versions = ", ".join(f"{k} {v}" for k, v in facts.get("versions", {}).items())
    load = facts.get("load_average_at_start")
    load_text = f"load average {load} at the start, " if load else ""
    return (
        f"`{document['script']}`, finished {document['finished']}, commit "
        f"`{facts.get('commit', '?')}`: {facts.get('cpus')} CPUs ({facts.get('cpu')}), "
        f"{facts.get('memory_gb')} GB, {facts.get('busy_at_start')} busy and "
        f"{load_text}{facts.get('load_average_at_end')} at the end; Python loop "
        f"{facts.get('python_speed')} M it/s (15–17 on an idle day of this kind of machine); "
        f"{versions}."
    )


TABLE_TITLES = {
    "c": "Part c, the floors and the per-request paths (medians of 3 rounds; the spread is "
    "the lowest and highest round's rate)",
    "a-cpu": "Parts a and b, CPU per batch of 1,000 events of each kind of process (over"
    " every round; the client of the hand-written SQL is the bench's own psycopg; the last"
    " column is the ratio to the SQL that CPU alone allows when the run keeps the cores busy)",
    "c-cpu": "Part c, CPU per request of each kind of process (medians of the rounds; the"
    " client is the load generator; the last column is the share of its floor's requests/s"
    " that CPU alone allows when the run keeps the cores busy)",
    "g": "Part g, gunicorn configurations compared (the same client for each)",
}


def block(documents: list[dict[str, Any]]) -> str:
    """The generated block: for each results document its machine, then its figures."""
    lines = [
        BEGIN,
        "",
        "## Latest run of `make bench`",
        "",
        "Written by `make bench` (bench/performance.py) from the figures it measured; what is"
        " outside this block is written by hand. Compare ratios, not absolute figures, between"
        ' runs: see "Why ratios".',
        "",
    ]
    for document in documents:
        lines += [f"### `{document['script']}`", "", machine_line(document), ""]
        failed = sum(1 for f in document["figures"] if f.ok is False)
        passed = sum(1 for f in document["figures"] if f.ok is True)
        lines += [f"{passed} targets met, {failed} missed.", ""]
        lines += markdown_table(
            [["figure", "measured", "target", "verdict"], *figure_rows(document["figures"])]
        )
        lines.append("")
        for key, table in document.get("tables", {}).items():
            if len(table) > 1:
                lines += [TABLE_TITLES.get(key, key) + ":", "", *markdown_table(table), ""]
    lines += [
        "To reproduce: `make bench` on PostgreSQL 127.0.0.1:5432 and Redis 127.0.0.1:6379 "
        '(see "How to reproduce" above).',
        "",
        END,
    ]
    return "\n".join(lines)


def doc_replace(text: str, generated: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with the block between the markers ``begin`` and ``end`` replaced by
    ``generated`` (markers included); without markers, ``generated`` is added at the end."""
    start = text.find(begin.split(" (")[0])
    stop = text.find(end, max(start, 0))
    if start == -1 or stop == -1 or stop < start:
        return text.rstrip("\n") + "\n\n" + generated + "\n"
    return text[:start] + generated + text[stop + len(end) :]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="results files (--results)")
    parser.add_argument("--doc", type=Path, default=DOC, help="default: docs/performance.md")
    args = parser.parse_args()
    documents = [results_read(path) for path in args.results if path.exists()]
    missing = [str(path) for path in args.results if not path.exists()]
    if missing:
        print(f"no results in {', '.join(missing)}: left out", file=sys.stderr)
    if not documents:
        print("no results to write", file=sys.stderr)
        return 1
    args.doc.write_text(doc_replace(args.doc.read_text(), block(documents)))
    print(f"{args.doc}: the generated block rewritten from {len(documents)} results files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
