#!/usr/bin/env python3
"""Render the chaos suite's results (one JSON row per scenario, written by the tests) as the
table docs/reliability.md keeps.

    .venv/bin/python hack/chaos-table.py [--results FILE] [--write docs/reliability.md]

Without --write it prints the table; with it, it replaces the table between the
`<!-- chaos-table:start -->` and `<!-- chaos-table:end -->` markers of that file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from connquota.testing.chaos import read_rows, render_table, results_path

START, END = "<!-- chaos-table:start -->", "<!-- chaos-table:end -->"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, default=results_path())
    ap.add_argument("--write", type=Path, help="the markdown file whose table to replace")
    args = ap.parse_args()
    if not args.results.exists():
        print(f"chaos-table: no results at {args.results} (run make chaos)", file=sys.stderr)
        return 1
    rows = sorted(read_rows(args.results), key=lambda r: int(r.scenario.split(".", 1)[0]))
    table = render_table(rows)
    if args.write is None:
        print(table, end="")
        return 0
    text = args.write.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    if not rest:
        print(f"chaos-table: no {START} marker in {args.write}", file=sys.stderr)
        return 1
    args.write.write_text(f"{head}{START}\n{table}{END}{tail}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
