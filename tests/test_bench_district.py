"""The benchmark's generated district really matches its files, so its figures mean something."""

from __future__ import annotations

import sys
from pathlib import Path

from storehelp import load, set_limits

from tasks.sync import run_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from roster import write_demographics, write_roster


def test_a_generated_district_loads_and_its_files_match_every_student(
    db: str, tmp_path: Path
) -> None:
    students = 3000
    write_roster(tmp_path / "roster", students)
    result = load(db, "bench", tmp_path / "roster")
    assert result.counts["students"].active == students
    assert result.counts["enrollments"].active >= students
    set_limits(db, "bench", hold=0.5)
    base, changed = tmp_path / "base.csv", tmp_path / "changed.csv"
    write_demographics(base, students, seed=7)
    write_demographics(changed, students, seed=11, changed_share=0.3, base_seed=7)

    first = run_file(db, "bench", base.read_bytes(), base.name, requested_by="test")
    assert first.report.summary.errors == 0 and first.report.summary.warnings == 0
    assert first.report.sync is not None
    assert (first.report.sync.matched, first.report.sync.updated) == (students, students)

    second = run_file(db, "bench", changed.read_bytes(), changed.name, requested_by="test")
    assert second.status == "succeeded" and second.report.sync is not None
    assert second.report.sync.matched == students
    assert 0.25 * students < second.report.sync.updated < 0.35 * students
