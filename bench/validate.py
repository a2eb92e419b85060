"""Benchmark: read + validate a realistic demographics file, in-process.

    .venv/bin/python bench/validate.py [--rows 1000000] [--runs 3] [--seed 7]
                                       [--style excel|quoted|cp1252|padded]

Generates (once, cached in the temp folder) a file the way Excel writes it: UTF-8 with a BOM,
CRLF, quoted values with commas, ~1 % bad cells (Excel-mangled SSIDs, "Male", "Yes", bad
emails) and some lower-case codes. Each run is a fresh process that imports the project, then
times reading the file's bytes and validating them; it prints the median time, rows/s, peak
RSS of the process, and the same for polars alone reading the file as text (the floor), with
the ratio between the two; then the same with the report rendered as `validate --format text`
and `--format json` write it, and the ratio json / text. --style writes the same rows as other
exports do: every value quoted, Windows-1252 with accents, or spaces around values.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HEADER = (
    "SSID,email,gender,ethnicity,race,english_learner,migrant,gifted_learner,special_ed,"
    "sed,homeless,foster"
)
RACES = [
    "White",
    "Black or African American",
    "Asian",
    "American Indian or Alaska Native",
    "Native Hawaiian or Other Pacific Islander",
    '"Asian, White"',
    '"Black or African American, White"',
]
ETHNICITIES = ["Hispanic or Latino", "Not Hispanic or Latino"]
BAD_CELLS = {
    0: lambda r, ssid: ssid.lstrip("0")[:9] or "1",  # lost leading zeros
    1: lambda r, ssid: "student.at.school",  # not an email
    2: lambda r, ssid: r.choice(["Male", "Female", "U"]),
    5: lambda r, ssid: r.choice(["Yes", "No", "1"]),
    9: lambda r, ssid: r.choice(["TRUE", "0"]),
}


def generate(path: Path, rows: int, seed: int, bad_share: float = 0.01) -> None:
    """Write a realistic file: ~bad_share of all cells are errors."""
    rnd = random.Random(seed)
    cells_per_row = 12
    bad_rows_share = bad_share * cells_per_row  # one bad cell per bad row
    with path.open("w", encoding="utf-8-sig", newline="") as out:
        out.write(HEADER + "\r\n")
        for i in range(rows):
            ssid = f"{rnd.randrange(10**10):010d}"
            flags = [
                "Y" if rnd.random() < p else "N" for p in (0.15, 0.03, 0.1, 0.12, 0.4, 0.02, 0.01)
            ]
            values = [
                ssid,
                f"s{i}.{ssid[-4:]}@students.district.k12.example.us",
                rnd.choice("MF"),
                rnd.choice(ETHNICITIES),
                rnd.choice(RACES),
                *flags,
            ]
            if rnd.random() < 0.002:
                values[2] = values[2].lower()  # accepted with normalized_value
            if rnd.random() < bad_rows_share:
                column = rnd.choice(list(BAD_CELLS))
                values[column] = BAD_CELLS[column](rnd, ssid)
            out.write(",".join(values) + "\r\n")


STYLES = ("excel", "quoted", "cp1252", "padded")


def derive(base: Path, path: Path, style: str) -> None:
    """The same rows as another export would write them."""
    import polars as pl

    frame = pl.read_csv(base, infer_schema=False)
    if style == "quoted":  # some student information systems quote every value
        frame.write_csv(path, quote_style="always", line_terminator="\r\n")
    elif style == "padded":  # spaces around values, removed silently by the reader
        frame.with_columns(" " + pl.col("SSID"), pl.col("email") + " ").write_csv(path)
    elif style == "cp1252":  # Excel on Windows, non-UTF-8, with accented values
        text = frame.with_columns(pl.col("race").str.replace("White", "Wh\u00eete")).write_csv()
        path.write_bytes(text.encode("cp1252"))


def _text(report: object) -> str:
    from tasks.render import DEFAULT_TEXT_ISSUES, render_text

    return render_text(report, DEFAULT_TEXT_ISSUES)  # type: ignore[arg-type]


def _json(report: object) -> str:
    from tasks.render import render_json

    return render_json(report) + "\n"  # type: ignore[arg-type]


RENDERERS = {"text": _text, "json": _json}


def measure(path: Path, mode: str) -> dict[str, float]:
    """Runs in a child process: time one read (+ validate) after imports."""
    import resource
    import time

    import polars as pl

    from tasks.read import read_source
    from tasks.validate import validate_bytes

    start = time.perf_counter()
    if mode == "floor":
        frame = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
        rows, issues = frame.height, 0
    else:
        result = validate_bytes(read_source(path), path.name)
        rows, issues = result.report.summary.rows, result.report.issues.height
        if mode in RENDERERS:  # the report as `validate --format text|json` writes it
            RENDERERS[mode](result.report)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak_mb, "rows": rows, "issues": issues}


def run_child(path: Path, mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--style", choices=STYLES, default="excel", help="how the file is written")
    parser.add_argument("--file", type=Path, help="benchmark this file instead")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child[1]), args.child[0])))
        return

    path = args.file
    if path is None:
        folder = Path(tempfile.gettempdir())
        base = folder / f"demographics-bench-{args.rows}-{args.seed}.csv"
        if not base.exists():
            print(f"generating {args.rows:,} rows (seed {args.seed}) -> {base}")
            generate(base.with_suffix(".tmp"), args.rows, args.seed)
            base.with_suffix(".tmp").rename(base)
        path = base
        if args.style != "excel":
            path = base.with_name(f"{base.stem}-{args.style}.csv")
            if not path.exists():
                derive(base, path.with_suffix(".tmp"), args.style)
                path.with_suffix(".tmp").rename(path)
    size_mb = path.stat().st_size / 1e6
    print(f"file: {path} ({size_mb:.1f} MB, style {args.style if args.file is None else 'given'})")

    modes = ("full", "floor", "text", "json")
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(args.runs):  # side by side, so a slow spell of the machine hits all alike
        for mode in modes:
            results[mode].append(run_child(path, mode))
    full, floor = results["full"], results["floor"]
    t_full = statistics.median(r["seconds"] for r in full)
    t_floor = statistics.median(r["seconds"] for r in floor)
    rows = int(full[0]["rows"])
    print(f"rows: {rows:,}   issues: {int(full[0]['issues']):,}   runs: {args.runs} (median)")
    print(
        f"read + validate: {t_full:.3f} s   {rows / t_full:,.0f} rows/s   "
        f"peak RSS {max(r['peak_rss_mb'] for r in full):,.0f} MB"
    )
    print(
        f"floor (polars read_csv as text only): {t_floor:.3f} s   "
        f"peak RSS {max(r['peak_rss_mb'] for r in floor):,.0f} MB"
    )
    print(f"ratio read + validate / floor: {t_full / t_floor:.2f}x")
    t_text = statistics.median(r["seconds"] for r in results["text"])
    t_json = statistics.median(r["seconds"] for r in results["json"])
    print(
        f"read + validate + report: --format text {t_text:.3f} s, --format json {t_json:.3f} s"
        f" (all {int(full[0]['issues']):,} issues); json / text: {t_json / t_text:.2f}x"
        " (target: at most 1.2x)"
    )


if __name__ == "__main__":
    main()
