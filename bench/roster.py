"""A district at scale: a OneRoster 1.1 roster and a demographics file that matches it.

    .venv/bin/python bench/roster.py DIR --students 1000000 [--seed 7]
                                     [--demographics FILE [--changed-share 0.05]]
    .venv/bin/python bench/roster.py load --students 1000000 [--runs 3]  (bench/roster_load.py)

Why it exists: the sync benchmark and the tests need a large district whose demographics file
really matches its roster (every row's SSID and email are those of one rostered student), and a
second upload of the same district that changes a known share of the students. The bundled
sample (schemas/samples) is a few hundred rows; this writes a million in seconds.

Everything is a deterministic function of the student index i and the seeds, so the roster
and any number of demographics files can be written separately and still agree:
- student i has the SSID `ssid_for(i)` and the email `email_for(i)`, in both files;
- `write_roster` writes orgs.csv, users.csv, classes.csv and enrollments.csv (one district,
  max(2, students // 1000) schools, about students // 25 classes with one teacher each, every
  student in exactly one class of their school, one district admin and one admin per school);
- `write_demographics` writes one valid row per student; with `changed_share=p`, about p of
  the rows (chosen by `seed`) differ from the base file of `base_seed` in one or two values.

The columns are built with vectorised polars expressions (a splitmix64 hash of i, with
wrapping unsigned arithmetic, stands in for a random generator), never a Python loop per row.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import polars as pl

from schemas.roster import ONEROSTER_HEADERS

ORGS_HEADER = ONEROSTER_HEADERS["orgs.csv"]
USERS_HEADER = ONEROSTER_HEADERS["users.csv"]
CLASSES_HEADER = ONEROSTER_HEADERS["classes.csv"]
ENROLLMENTS_HEADER = ONEROSTER_HEADERS["enrollments.csv"]
DEMOGRAPHICS_HEADER = (
    "SSID,email,gender,ethnicity,race,english_learner,migrant,gifted_learner,special_ed,"
    "sed,homeless,foster"
)

DISTRICT = "org-bench"
DISTRICT_NAME = "Bench Unified School District"
STUDENT_DOMAIN = "students.bench.k12.example.us"
STAFF_DOMAIN = "bench.k12.example.us"
TERM, BEGIN, END = "term-bench", "2026-08-17", "2027-06-04"
STUDENTS_PER_SCHOOL = 1000
STUDENTS_PER_CLASS = 25

# SSID = (A * i + B) mod 10**10: a bijection on 10-digit values, as A is coprime to 10.
SSID_MODULUS = 10**10
SSID_MULTIPLIER = 7_654_321_013
SSID_OFFSET = 1_029_384_757
MAX_STUDENTS = 10**9

GIVEN = [
    "Olivia", "Liam", "Sofia", "Mateo", "Aaliyah", "Noah", "Mei", "Arjun", "Fatima", "Diego",
    "Nizhoni", "Kekoa", "Amara", "Ethan", "Ximena", "Omar", "Hana", "Malik", "Chloe", "Minh",
]  # fmt: skip
FAMILY = [
    "Garcia", "Nguyen", "Johnson", "Patel", "Kim", "Okafor", "Begay", "Kealoha", "Hassan", "Smith",
    "Lopez", "Chen", "Williams", "Tanaka", "Brown", "Hernandez", "Ali", "Davis", "Singh", "Yazzie",
]  # fmt: skip
SUBJECTS = ["Mathematics", "English Language Arts", "Science", "Social Studies", "Art", "Music"]
GENDERS = ["M", "F"]
ETHNICITIES = ["Not Hispanic or Latino", "Hispanic or Latino"]
HISPANIC_SHARE = 0.28
RACES = {  # federal categories and combinations, with their shares
    "White": 0.50,
    "Black or African American": 0.15,
    "Asian": 0.08,
    "American Indian or Alaska Native": 0.03,
    "Native Hawaiian or Other Pacific Islander": 0.02,
    "Two or more races": 0.14,
    "Asian, White": 0.04,
    "Black or African American, White": 0.04,
}
FLAGS = {  # column: share of students with Y
    "english_learner": 0.12,
    "migrant": 0.02,
    "gifted_learner": 0.08,
    "special_ed": 0.14,
    "sed": 0.42,
    "homeless": 0.02,
    "foster": 0.01,
}

_MASK = 2**64 - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def ssid_for(i: int) -> str:
    """The SSID of student i: 10 digits, unique for 0 <= i < 10**9, leading zeros possible."""
    if not 0 <= i < MAX_STUDENTS:
        raise ValueError(f"student index must be in [0, {MAX_STUDENTS}), not {i}")
    return f"{(SSID_MULTIPLIER * i + SSID_OFFSET) % SSID_MODULUS:010d}"


def email_for(i: int) -> str:
    """The email of student i."""
    return f"s{i}@{STUDENT_DOMAIN}"


def _mix_int(x: int) -> int:
    """splitmix64's finaliser on a Python int (used for the per-seed constants)."""
    x &= _MASK
    x = ((x ^ (x >> 30)) * _MIX1) & _MASK
    x = ((x ^ (x >> 27)) * _MIX2) & _MASK
    return x ^ (x >> 31)


def _u64(value: int) -> pl.Expr:
    return pl.lit(value & _MASK, dtype=pl.UInt64)


def _hash(i: pl.Expr, seed: int, salt: int) -> pl.Expr:
    """A 64-bit hash of (i, seed, salt): splitmix64 with wrapping UInt64 arithmetic."""
    x = i.cast(pl.UInt64) * _u64(_GOLDEN) + _u64(_mix_int(seed * 0x100000001B3 + salt))
    x = x.xor(x // 2**30) * _u64(_MIX1)
    x = x.xor(x // 2**27) * _u64(_MIX2)
    return x.xor(x // 2**31)


def _uniform(i: pl.Expr, seed: int, salt: int) -> pl.Expr:
    """A number in [0, 1) from (i, seed, salt)."""
    return (_hash(i, seed, salt) // 2**11).cast(pl.Float64) / float(2**53)


def _below(i: pl.Expr, seed: int, salt: int, n: int) -> pl.Expr:
    """An integer in [0, n) from (i, seed, salt)."""
    return (_hash(i, seed, salt) % n).cast(pl.Int64)


def _pick(values: list[str], index: pl.Expr) -> pl.Expr:
    """values[index], vectorised."""
    return pl.lit(pl.Series(values, dtype=pl.String)).gather(index)


def _ssid_expr(i: pl.Expr) -> pl.Expr:
    ssid = (i.cast(pl.UInt64) * SSID_MULTIPLIER + SSID_OFFSET) % SSID_MODULUS
    return ssid.cast(pl.String).str.zfill(10)


def _email_expr(i: pl.Expr) -> pl.Expr:
    return pl.format("s{}@" + STUDENT_DOMAIN, i)


def _none() -> pl.Expr:
    return pl.lit(None, dtype=pl.String)


def _layout(students: int) -> tuple[int, int]:
    """(schools, classes per school) for a district of this many students."""
    if not 1 <= students <= MAX_STUDENTS:
        raise ValueError(f"students must be in [1, {MAX_STUDENTS}], not {students}")
    schools = max(2, students // STUDENTS_PER_SCHOOL)
    return schools, max(1, students // STUDENTS_PER_CLASS // schools)


def _write(path: Path, header: str, frames: list[pl.DataFrame]) -> None:
    """One CSV: the exact header line, then the frames' rows (LF, plain UTF-8)."""
    with path.open("wb") as out:
        out.write((header + "\n").encode())
        for frame in frames:
            assert ",".join(frame.columns) == header, frame.columns
            frame.write_csv(out, include_header=False)


def _users(frame: pl.LazyFrame) -> pl.DataFrame:
    """Fill the users.csv columns a frame does not set, in header order."""
    defaults = {"status": _none(), "dateLastModified": _none(), "enabledUser": pl.lit("true")}
    columns = [
        pl.col(c) if c in frame.collect_schema() else defaults.get(c, _none()).alias(c)
        for c in USERS_HEADER.split(",")
    ]
    return frame.select(columns).collect()


def write_roster(directory: Path, students: int, seed: int = 7) -> None:
    """Write orgs.csv, users.csv, classes.csv and enrollments.csv for the bench district."""
    schools, per_school = _layout(students)
    classes = schools * per_school
    directory.mkdir(parents=True, exist_ok=True)
    school_id = pl.format("sch-{}", pl.col("school"))
    teacher_id = pl.format("tch-{}", pl.col("k"))

    school_frame = pl.LazyFrame().select(pl.int_range(schools, dtype=pl.Int64).alias("school"))
    orgs = school_frame.select(
        school_id.alias("sourcedId"),
        _none().alias("status"),
        _none().alias("dateLastModified"),
        pl.format("Bench School {}", pl.col("school")).alias("name"),
        pl.lit("school").alias("type"),
        pl.format("BS{}", pl.col("school")).alias("identifier"),
        pl.lit(DISTRICT).alias("parentSourcedId"),
    ).collect()
    district = pl.DataFrame(
        [[DISTRICT], [None], [None], [DISTRICT_NAME], ["district"], ["BUSD"], [None]],
        schema=dict.fromkeys(ORGS_HEADER.split(","), pl.String),
    )
    _write(directory / "orgs.csv", ORGS_HEADER, [district, orgs])

    # Class k: school k // per_school, grade (k % per_school) % 12 + 1, taught by teacher k.
    class_frame = pl.LazyFrame().select(pl.int_range(classes, dtype=pl.Int64).alias("k"))
    class_frame = class_frame.with_columns(
        school=pl.col("k") // per_school,
        grade=(pl.col("k") % per_school % 12 + 1).cast(pl.String).str.zfill(2),
        subject=_pick(SUBJECTS, pl.col("k") % len(SUBJECTS)),
        period=(pl.col("k") % per_school % 7 + 1).cast(pl.String),
    )
    class_rows = class_frame.select(
        pl.format("cls-{}", pl.col("k")).alias("sourcedId"),
        _none().alias("status"),
        _none().alias("dateLastModified"),
        pl.format("{} {} - P{}", pl.col("subject"), pl.col("grade"), pl.col("period")).alias(
            "title"
        ),
        pl.col("grade").alias("grades"),
        pl.format("crs-{}-{}", pl.col("k") % len(SUBJECTS), pl.col("grade")).alias(
            "courseSourcedId"
        ),
        pl.format("C{}", pl.col("k")).alias("classCode"),
        pl.lit("scheduled").alias("classType"),
        pl.format("Room {}", 100 + pl.col("k") % per_school).alias("location"),
        school_id.alias("schoolSourcedId"),
        pl.lit(TERM).alias("termSourcedIds"),
        pl.col("subject").alias("subjects"),
        _none().alias("subjectCodes"),
        pl.col("period").alias("periods"),
    ).collect()
    _write(directory / "classes.csv", CLASSES_HEADER, [class_rows])

    # Student i: school i * schools // students (contiguous blocks), one class of that school.
    i = pl.col("i")
    student_frame = (
        pl.LazyFrame()
        .select(pl.int_range(students, dtype=pl.Int64).alias("i"))
        .with_columns(school=i * schools // students)
        .with_columns(k=pl.col("school") * per_school + _below(i, seed, 1, per_school))
    )
    admins = pl.concat(
        [
            pl.LazyFrame({"sourcedId": ["adm-district"], "org": [DISTRICT], "n": ["district"]}),
            school_frame.select(
                pl.format("adm-sch-{}", pl.col("school")).alias("sourcedId"),
                school_id.alias("org"),
                pl.col("school").cast(pl.String).alias("n"),
            ),
        ]
    ).select(
        "sourcedId",
        pl.col("org").alias("orgSourcedIds"),
        pl.lit("administrator").alias("role"),
        pl.format("admin.{}@" + STAFF_DOMAIN, pl.col("n")).alias("username"),
        pl.lit("Pat").alias("givenName"),
        pl.format("Admin-{}", pl.col("n")).alias("familyName"),
        pl.format("A-{}", pl.col("n")).alias("identifier"),
        pl.format("admin.{}@" + STAFF_DOMAIN, pl.col("n")).alias("email"),
    )
    teachers = class_frame.select(
        teacher_id.alias("sourcedId"),
        school_id.alias("orgSourcedIds"),
        pl.lit("teacher").alias("role"),
        pl.format("t{}@" + STAFF_DOMAIN, pl.col("k")).alias("username"),
        _pick(GIVEN, pl.col("k") * 7 % len(GIVEN)).alias("givenName"),
        _pick(FAMILY, pl.col("k") * 3 % len(FAMILY)).alias("familyName"),
        pl.format("T{}", pl.col("k")).alias("identifier"),
        pl.format("t{}@" + STAFF_DOMAIN, pl.col("k")).alias("email"),
    )
    student_users = student_frame.select(
        pl.format("stu-{}", i).alias("sourcedId"),
        school_id.alias("orgSourcedIds"),
        pl.lit("student").alias("role"),
        _email_expr(i).alias("username"),
        _pick(GIVEN, _below(i, seed, 2, len(GIVEN))).alias("givenName"),
        _pick(FAMILY, _below(i, seed, 3, len(FAMILY))).alias("familyName"),
        _ssid_expr(i).alias("identifier"),
        _email_expr(i).alias("email"),
        (pl.col("k") % per_school % 12 + 1).cast(pl.String).str.zfill(2).alias("grades"),
    )
    _write(
        directory / "users.csv",
        USERS_HEADER,
        [_users(admins), _users(teachers), _users(student_users)],
    )

    def enrollment(frame: pl.LazyFrame, number: pl.Expr, user: pl.Expr, role: str) -> pl.DataFrame:
        return frame.select(
            pl.format("enr-{}", number).alias("sourcedId"),
            _none().alias("status"),
            _none().alias("dateLastModified"),
            pl.format("cls-{}", pl.col("k")).alias("classSourcedId"),
            school_id.alias("schoolSourcedId"),
            user.alias("userSourcedId"),
            pl.lit(role).alias("role"),
            pl.lit("true" if role == "teacher" else "false").alias("primary"),
            pl.lit(BEGIN).alias("beginDate"),
            pl.lit(END).alias("endDate"),
        ).collect()

    _write(
        directory / "enrollments.csv",
        ENROLLMENTS_HEADER,
        [
            enrollment(class_frame, pl.col("k"), teacher_id, "teacher"),
            enrollment(student_frame, classes + i, pl.format("stu-{}", i), "student"),
        ],
    )


def _race_index(u: pl.Expr) -> pl.Expr:
    """The index into RACES of a uniform number u, by the shares."""
    index = pl.lit(0, dtype=pl.Int64)
    edge = 0.0
    for share in list(RACES.values())[:-1]:
        edge += share
        index = index + (u >= edge).cast(pl.Int64)
    return index


def write_demographics(
    path: Path,
    students: int,
    seed: int,
    changed_share: float = 0.0,
    base_seed: int = 7,
) -> None:
    """One valid row per student: the base file of base_seed, about changed_share of it changed.

    A changed row differs from the base in one or two values: a flag flipped, the race
    changed or the gender swapped (and, for some, a second flag flipped). Which rows change,
    and how, depends on seed; the base values depend on (i, base_seed) only.
    """
    _layout(students)
    if not 0.0 <= changed_share <= 1.0:
        raise ValueError(f"changed_share must be in [0, 1], not {changed_share}")
    i = pl.col("i")
    flags = list(FLAGS)
    races = list(RACES)
    changed = _uniform(i, seed, 100) < changed_share
    kind = _below(i, seed, 101, 3)  # 0 flip a flag, 1 change the race, 2 swap the gender
    second = _uniform(i, seed, 102) < 0.3  # also flip another flag
    which = _below(i, seed, 103, len(flags))
    which2 = (which + 1 + _below(i, seed, 104, len(flags) - 1)) % len(flags)
    race_shift = 1 + _below(i, seed, 105, len(races) - 1)

    gender = _below(i, base_seed, 1, 2)
    gender = pl.when(changed & (kind == 2)).then(1 - gender).otherwise(gender)
    race = _race_index(_uniform(i, base_seed, 3))
    race = pl.when(changed & (kind == 1)).then((race + race_shift) % len(races)).otherwise(race)
    flag_columns = []
    for n, (name, share) in enumerate(FLAGS.items()):
        flip = changed & (((kind == 0) & (which == n)) | (second & (which2 == n)))
        value = (_uniform(i, base_seed, 10 + n) < share).xor(flip)
        flag_columns.append(pl.when(value).then(pl.lit("Y")).otherwise(pl.lit("N")).alias(name))
    frame = (
        pl.LazyFrame()
        .select(pl.int_range(students, dtype=pl.Int64).alias("i"))
        .select(
            _ssid_expr(i).alias("SSID"),
            _email_expr(i).alias("email"),
            _pick(GENDERS, gender).alias("gender"),
            _pick(ETHNICITIES, (_uniform(i, base_seed, 2) < HISPANIC_SHARE).cast(pl.Int64)).alias(
                "ethnicity"
            ),
            _pick(races, race).alias("race"),
            *flag_columns,
        )
        .collect()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, DEMOGRAPHICS_HEADER, [frame])


def main() -> None:
    if sys.argv[1:2] == ["load"]:  # time load_roster on such a roster: bench/roster_load.py
        from roster_load import main as load_main

        load_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path, help="where to write the four roster files")
    parser.add_argument("--students", type=int, required=True)
    parser.add_argument("--seed", type=int, default=7, help="roster seed, and demographics changes")
    parser.add_argument("--demographics", type=Path, help="also write a matching demographics CSV")
    parser.add_argument("--changed-share", type=float, default=0.0, help="share of changed rows")
    parser.add_argument("--base-seed", type=int, default=7, help="seed of the base demographics")
    args = parser.parse_args()
    try:
        start = time.perf_counter()
        write_roster(args.directory, args.students, args.seed)
        seconds = time.perf_counter() - start
        print(f"roster: {args.students:,} students -> {args.directory} ({seconds:.2f} s)")
        if args.demographics:
            start = time.perf_counter()
            write_demographics(
                args.demographics, args.students, args.seed, args.changed_share, args.base_seed
            )
            print(f"demographics: -> {args.demographics} ({time.perf_counter() - start:.2f} s)")
    except ValueError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
