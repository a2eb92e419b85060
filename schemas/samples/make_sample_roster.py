"""Write the sample OneRoster 1.1 roster and extend the sample demographics file to match it.

    .venv/bin/python schemas/samples/make_sample_roster.py

Deterministic and idempotent: it rewrites schemas/samples/roster/{orgs,users,classes,
enrollments}.csv and keeps rows 1-41 of schemas/samples/demographics.csv byte for byte (the
hand-made error cases), replacing whatever follows them with the generated rows. The students
of rows 2-41 are read from the file; the ones whose SSID or email there is broken get their
real values from REAL_SSID / REAL_EMAIL.

Rows appended after row 41:
  42  an SSID that is not in the roster (moved in, not yet rostered): no_matching_student
  43  a rostered student's SSID with a nickname email nobody has: email_mismatch
  44  one student's SSID with another student's email: identifier_conflict
  45  no SSID, a rostered student's email: matched by email
  46- clean rows for other roster students (about 20 roster students are not in the file)
"""

from __future__ import annotations

import csv
import io
import random
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from schemas.roster import ONEROSTER_HEADERS

HERE = Path(__file__).resolve().parent
DEMOGRAPHICS = HERE / "demographics.csv"
ROSTER = HERE / "roster"
KEEP_ROWS = 41  # header + rows 2..41 of the hand-made file
SEED = 20261128
STUDENT_DOMAIN = "students.maplevalley.k12.example.us"
STAFF_DOMAIN = "maplevalley.k12.example.us"
TOTAL_STUDENTS = 200
CLEAN_ROWS = 142
BEGIN, END, TERM = "2026-08-17", "2027-06-04", "term-2026-27"

ORGS_HEADER = ONEROSTER_HEADERS["orgs.csv"]
USERS_HEADER = ONEROSTER_HEADERS["users.csv"]
CLASSES_HEADER = ONEROSTER_HEADERS["classes.csv"]
ENROLLMENTS_HEADER = ONEROSTER_HEADERS["enrollments.csv"]

DISTRICT = "org-mvusd"
MIDDLE = "org-mvms"
HIGH = "org-mvhs"
ORGS = [
    [DISTRICT, "", "", "Maple Valley Unified School District", "district", "MVUSD", ""],
    [MIDDLE, "", "", "Maple Valley Middle School", "school", "MVMS", DISTRICT],
    [HIGH, "", "", "Maple Valley High School", "school", "MVHS", DISTRICT],
]


def words(text: str) -> list[str]:
    return text.split()


def school_of(grade: str) -> str:
    return MIDDLE if grade in ("06", "07", "08") else HIGH


# Students of rows 2-41 whose identifier is broken in the file, with their real values.
REAL_SSID = {
    "noah.okafor": "0007340291",  # row 5: "7340291", Excel dropped the leading zeros
    "isabella.garcia": "4812340917",  # row 8: "4.81234E+09", scientific notation
}
REAL_EMAIL = {"3585435847": f"hana.tanaka@{STUDENT_DOMAIN}"}  # row 19: "hana.tanaka@students"
REAL_GRADE = {"hana.tanaka": "09"}  # rows 19 and 25 disagree (6, 9): row 25 is the usable one
# Display names where the email local part is not simply "given.family".
SPELLING = {"leilani.kealoha": ("Leilani", "Kealoha"), "tenzin.dorje": ("Tenzin", "Dorje")}

# The deliberate sync-time cases: (given, family, grade, female).
NOT_ROSTERED = ("Amir", "Haddad", "09", False)
NICKNAME = ("Alejandro", "Reyes", "10", False)  # the file says alex.reyes@...
CONFLICT_SSID = ("Priya", "Raman", "07", True)  # her SSID ...
CONFLICT_EMAIL = ("Daniel", "Okonkwo", "07", False)  # ... with his email (a copy-paste slip)
BY_EMAIL = ("Mariana", "Silva", "11", True)

# Given names by family-name group and gender (female, male); "common" is shared by all.
GIVEN = {
    "common": (
        "Olivia Emma Charlotte Amelia Sophia Harper Evelyn Abigail Ella Scarlett Leah Hannah Maya "
        "Nora Lily Sienna Isla Brooklyn Savannah Madeline Josephine Sadie Elena Naomi Talia Grace",
        "James Benjamin Henry Alexander Sebastian Jack Samuel Michael Matthew Joseph David Carter "
        "Luke Gabriel Isaac Julian Adrian Isaiah Elias Caleb Josiah Roman Nolan Levi Ezra Eli "
        "Mason Logan Hunter Colton Daniel",
    ),
    "hispanic": (
        "Camila Valentina Ximena Lucia Guadalupe Daniela Jimena Gabriela Renata Paola Alondra "
        "Kamila Esperanza Mariana Yaretzi",
        "Jose Luis Carlos Juan Miguel Angel Jesus Emiliano Javier Andres Rafael Alejandro Tomas "
        "Santiago Mateo",
    ),
    "white": ("Ingrid Anastasia Clara Greta", "Nikolai Dmitri Anders Finn"),
    "black": (
        "Imani Nia Destiny Jasmine Kiara Deja Keisha Ifeoma Chiamaka Adaeze Amina Hodan",
        "Marcus Jamal DeShawn Darnell Terrence Jalen Andre Kwame Chinedu Emeka Tunde Abdirahman",
    ),
    "asian": (
        "Ananya Priya Anjali Meera Mei Yuna Sakura Jiwoo Linh Thuy Ngoc Sana Hina Maryam Farah "
        "Noor",
        "Arjun Rohan Aarav Vikram Dev Ravi Kenji Haruto Minho Joon Wei Jun Hao Minh Bao Duc Omar "
        "Ibrahim",
    ),
    "native": ("Nizhoni Aiyana Tala Shandiin", "Ahiga Dakota Hastiin Kele"),
    "islander": ("Malia Kalani Pualani Lupe Keala", "Kekoa Makoa Koa Sione Tevita"),
}
OWN_GIVEN_SHARE = {"white": 0.15}  # other groups: 0.55 of given names from the group's own list
FAMILY = {
    "hispanic": (
        "Garcia Rodriguez Hernandez Lopez Gonzalez Perez Sanchez Ramirez Flores Rivera Gomez Diaz "
        "Cruz Morales Ortiz Gutierrez Chavez Ramos Ruiz Alvarez Mendoza Castillo Vasquez Romero "
        "Herrera Medina Aguilar Peña Santos-Ruiz Navarro Delgado Salazar Cortez Espinoza"
    ),
    "white": (
        "Miller Anderson Thomas Taylor Moore Martin Thompson White Harris Hill Baker Nelson "
        "Carter Mitchell Roberts Campbell Parker Evans Edwards Collins Stewart Murphy Cook Rogers "
        "O'Brien Kowalski Novak Petrov Larsen Schmidt Sullivan McCarthy Bergstrom"
    ),
    "black": (
        "Jackson Washington Jefferson Banks Freeman Coleman Jenkins Brooks Simmons Bryant "
        "Richardson Mensah Owusu Adeyemi Nwosu Abdi Yusuf Mohamed Tesfaye Diallo"
    ),
    "asian": (
        "Nguyen Tran Pham Le Wang Li Zhang Liu Huang Wu Park Choi Lim Nakamura Sato Yamamoto "
        "Singh Shah Gupta Kumar Iyer Reddy Khan Ahmed Rahman Sherpa Vang Xiong"
    ),
    "native": "Tsosie Benally Nez Etsitty Jim Harjo",
    "islander": "Kahale Akana Fonoti Tuilagi Faleolo Mahoe",
}
FAMILY_GROUP = {name: group for group, names in FAMILY.items() for name in names.split()}
FAMILY_GROUP.update(Haddad="white", Raman="asian", Okonkwo="black", Silva="hispanic")
FAMILY_WEIGHTS = {
    "hispanic": 30,
    "white": 36,
    "black": 14,
    "asian": 14,
    "native": 3,
    "islander": 3,
}
RACES = {  # federal race categories (and combinations), weighted by family-name group
    "hispanic": {
        "White": 70,
        "Two or more races": 14,
        "American Indian or Alaska Native": 8,
        "Black or African American": 8,
    },
    "white": {
        "White": 86,
        "Two or more races": 8,
        "Asian, White": 3,
        "Black or African American, White": 3,
    },
    "black": {
        "Black or African American": 86,
        "Two or more races": 8,
        "Black or African American, White": 6,
    },
    "asian": {"Asian": 90, "Asian, White": 6, "Two or more races": 4},
    "native": {"American Indian or Alaska Native": 90, "Two or more races": 10},
    "islander": {"Native Hawaiian or Other Pacific Islander": 85, "Two or more races": 15},
}
HISPANIC_SHARE = {"hispanic": 0.88}  # other groups: 0.05
FLAG_RATES = (0.12, 0.02, 0.08, 0.14, 0.42, 0.02, 0.01)  # EL, migrant, gifted, SPED, SED, ...
GRADE_WEIGHTS = {"06": 15, "07": 15, "08": 15, "09": 15, "10": 14, "11": 13, "12": 13}

TEACHERS = [  # (given, family, school)
    ("Rebecca", "Lindqvist", MIDDLE),
    ("Marcus", "Bell", MIDDLE),
    ("Yolanda", "Fuentes", MIDDLE),
    ("Hiroko", "Matsuda", MIDDLE),
    ("Gregory", "Whitfield", MIDDLE),
    ("Adriana", "Villalobos", HIGH),
    ("Samuel", "Osei", HIGH),
    ("Deepa", "Krishnan", HIGH),
    ("Thomas", "Redcloud", HIGH),
    ("Claire", "Dubois", HIGH),
]
ADMINS = [  # (given, family, org): the district admin first
    ("Patricia", "Morales-Grant", DISTRICT),
    ("Kevin", "Ashford", MIDDLE),
    ("Lorraine", "Yellowhorse", HIGH),
]
CLASSES = [  # (title, grades, course, code, room, subject, period, teacher index)
    ("Math 6 - P1", "06", "crs-math6", "MATH6-P1", "Room 104", "Mathematics", "1", 0),
    ("English 7 - P2", "07", "crs-ela7", "ELA7-P2", "Room 112", "English Language Arts", "2", 1),
    ("Science 8 - P3", "08", "crs-sci8", "SCI8-P3", "Room 120", "Science", "3", 2),
    ("Social Studies - P4", "06,07,08", "crs-ss-ms", "SS-P4", "Room 120", "Social Studies", "4", 2),
    ("Art - P5", "06,07,08", "crs-art-ms", "ART-P5", "Room 131", "Visual Arts", "5", 3),
    ("Band - P6", "06,07,08", "crs-band-ms", "BAND-P6", "Music Room", "Music", "6", 4),
    ("Algebra I - P2", "09", "crs-alg1", "ALG1-P2", "Room 204", "Mathematics", "2", 5),
    ("English 10 - P1", "10", "crs-ela10", "ELA10-P1", "Room 211", "English Language Arts", "1", 6),
    ("Chemistry - P3", "11", "crs-chem", "CHEM-P3", "Lab 2", "Science", "3", 7),
    ("U.S. Government - P4", "12", "crs-gov", "GOV-P4", "Room 226", "Social Studies", "4", 8),
    (
        "Spanish I - P5",
        "09,10,11,12",
        "crs-span1",
        "SPAN1-P5",
        "Room 232",
        "World Languages",
        "5",
        9,
    ),
    ("Biology - P6", "09,10,11,12", "crs-bio", "BIO-P6", "Lab 1", "Science", "6", 7),
]


@dataclass
class Student:
    given: str
    family: str
    grade: str
    ssid: str
    female: bool | None = None  # None: taken from the hand-made rows, not generated
    middle: str = ""
    source_id: str = ""

    @property
    def email(self) -> str:
        return f"{local_part(self.given, self.family)}@{STUDENT_DOMAIN}"


def local_part(given: str, family: str) -> str:
    def clean(name: str) -> str:
        ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
        return "".join(c for c in ascii_name.lower() if c.isalnum() or c == "-")

    return f"{clean(given)}.{clean(family)}"


def given_name(rnd: random.Random, group: str, female: bool) -> str:
    own = rnd.random() < OWN_GIVEN_SHARE.get(group, 0.55)
    return rnd.choice(words(GIVEN[group if own else "common"][0 if female else 1]))


def weighted(rnd: random.Random, weights: dict[str, int]) -> str:
    return rnd.choices(list(weights), weights=list(weights.values()))[0]


def new_ssid(rnd: random.Random, taken: set[str]) -> str:
    while True:
        # About a fifth of real SSIDs start with "00" (what Excel loses when it reads a number).
        ssid = f"{rnd.randrange(10**8 if rnd.random() < 0.2 else 10**10):010d}"
        if ssid not in taken:
            taken.add(ssid)
            return ssid


def hand_made_students(lines: list[str]) -> list[Student]:
    """The distinct students of rows 2-41, with their real SSID, email and grade."""
    students: dict[str, Student] = {}
    for row in csv.reader(lines[1:]):
        if len(row) < 13 or not row[1]:
            continue
        ssid = REAL_SSID.get(row[1].split("@")[0], row[0])
        email = REAL_EMAIL.get(ssid, row[1])
        key = email.split("@")[0]
        if key in students:
            students[key].ssid = students[key].ssid or ssid
            continue
        given, family = SPELLING.get(key, tuple(p.capitalize() for p in key.split(".")))
        grade = REAL_GRADE.get(key, f"{int(row[12]):02d}")
        students[key] = Student(given, family, grade, ssid)
    return list(students.values())


def build_students(
    rnd: random.Random, hand_made: list[Student]
) -> tuple[list[Student], dict[str, Student], list[Student]]:
    """All rostered students (sorted, with sourcedIds), the special cases, the generated ones."""
    taken_ssids = {s.ssid for s in hand_made}
    taken_emails = {s.email for s in hand_made}
    specials = {}
    for name, (given, family, grade, female) in {
        "not_rostered": NOT_ROSTERED,
        "nickname": NICKNAME,
        "conflict_ssid": CONFLICT_SSID,
        "conflict_email": CONFLICT_EMAIL,
        "by_email": BY_EMAIL,
    }.items():
        student = Student(given, family, grade, new_ssid(rnd, taken_ssids), female)
        specials[name] = student
        taken_emails.add(student.email)
    taken_emails.add(f"alex.reyes@{STUDENT_DOMAIN}")
    generated = []
    families = sorted(FAMILY_GROUP)
    while len(hand_made) + 4 + len(generated) < TOTAL_STUDENTS:
        female = rnd.random() < 0.5
        group = weighted(rnd, FAMILY_WEIGHTS)
        family = rnd.choice([f for f in families if FAMILY_GROUP[f] == group])
        given = given_name(rnd, group, female)
        student = Student(given, family, weighted(rnd, GRADE_WEIGHTS), "", female)
        if student.email in taken_emails:
            continue
        taken_emails.add(student.email)
        student.ssid = new_ssid(rnd, taken_ssids)
        generated.append(student)
    everyone = [
        *hand_made,
        *(specials[k] for k in ("nickname", "conflict_ssid", "conflict_email", "by_email")),
        *generated,
    ]
    for student in everyone:
        if student.female is not None and rnd.random() < 0.35:
            group = FAMILY_GROUP.get(student.family, "white")
            while student.middle in ("", student.given):
                student.middle = given_name(rnd, group, student.female)
    everyone.sort(key=lambda s: (s.grade, s.family, s.given))
    for number, student in enumerate(everyone, start=1):
        student.source_id = f"stu-{number:04d}"
    return everyone, specials, generated


def demographic_values(rnd: random.Random, student: Student) -> list[str]:
    group = FAMILY_GROUP.get(student.family, "white")
    female = student.female if student.female is not None else rnd.random() < 0.5
    hispanic = rnd.random() < HISPANIC_SHARE.get(group, 0.05)
    flags = ["Y" if rnd.random() < rate else "N" for rate in FLAG_RATES]
    return [
        "F" if female else "M",
        "Hispanic or Latino" if hispanic else "Not Hispanic or Latino",
        weighted(rnd, RACES[group]),
        *flags,
        str(int(student.grade)),
    ]


def csv_text(header: str, rows: list[list[str]], terminator: str = "\n") -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=terminator)
    writer.writerows(rows)
    return header + terminator + out.getvalue()


def user_row(
    source_id: str,
    org: str,
    role: str,
    email: str,
    name: tuple[str, str, str],
    identifier: str,
    grade: str = "",
) -> list[str]:
    """One users.csv row: the email is both username and email; `name` is (given, family,
    middle)."""
    given, family, middle = name
    return [
        source_id,
        "",
        "",
        "true",
        org,
        role,
        email,
        "",
        given,
        family,
        middle,
        identifier,
        email,
        "",
        "",
        "",
        grade,
        "",
    ]


def teacher_id(number: int) -> str:
    return f"tch-{number:02d}"


def user_rows(students: list[Student]) -> list[list[str]]:
    """Teachers, then administrators, then students."""
    users = []
    for number, (given, family, school) in enumerate(TEACHERS, start=1):
        email = f"{local_part(given, family)}@{STAFF_DOMAIN}"
        users.append(
            user_row(
                teacher_id(number),
                school,
                "teacher",
                email,
                (given, family, ""),
                f"T{1000 + number}",
            )
        )
    for number, (given, family, org) in enumerate(ADMINS, start=1):
        email = f"{local_part(given, family)}@{STAFF_DOMAIN}"
        users.append(
            user_row(
                f"adm-{number:02d}",
                org,
                "administrator",
                email,
                (given, family, ""),
                f"A{1000 + number}",
            )
        )
    for s in students:
        users.append(
            user_row(
                s.source_id,
                school_of(s.grade),
                "student",
                s.email,
                (s.given, s.family, s.middle),
                s.ssid,
                s.grade,
            )
        )
    return users


def class_rows() -> list[list[str]]:
    classes = []
    for number, (title, grades, course, code, room, subject, period, _) in enumerate(
        CLASSES, start=1
    ):
        school = school_of(grades[:2])
        classes.append(
            [
                f"cls-{number:02d}",
                "",
                "",
                title,
                grades,
                course,
                code,
                "scheduled",
                room,
                school,
                TERM,
                subject,
                "",
                period,
            ]
        )
    return classes


def class_members(students: list[Student], rnd: random.Random) -> dict[int, list[str]]:
    """Each student's sourcedId in their grade's core class and 0-2 electives, by class index.

    Draws from `rnd` student by student, in order: the demographics rows drawn after depend on
    it."""
    members: dict[int, list[str]] = {i: [] for i in range(len(CLASSES))}
    for s in students:
        core = next(i for i, c in enumerate(CLASSES) if c[1] == s.grade)
        electives = [i for i, c in enumerate(CLASSES) if "," in c[1] and s.grade in c[1]]
        extra = rnd.choices([0, 1, 2], weights=[25, 45, 30])[0]
        for index in sorted([core, *rnd.sample(electives, extra)]):
            members[index].append(s.source_id)
    return members


def enrollment_rows(members: dict[int, list[str]]) -> list[list[str]]:
    """Class by class: its teacher first, then its students."""
    enrollments = []
    for index, (_, grades, *_, teacher) in enumerate(CLASSES):
        class_id, school = f"cls-{index + 1:02d}", school_of(grades[:2])
        for user, role in [(teacher_id(teacher + 1), "teacher")] + [
            (m, "student") for m in members[index]
        ]:
            enrollments.append(
                [
                    f"enr-{len(enrollments) + 1:05d}",
                    "",
                    "",
                    class_id,
                    school,
                    user,
                    role,
                    "true" if role == "teacher" else "false",
                    BEGIN,
                    END,
                ]
            )
    return enrollments


def write_roster(students: list[Student], rnd: random.Random) -> None:
    ROSTER.mkdir(exist_ok=True)
    users = user_rows(students)
    classes = class_rows()
    enrollments = enrollment_rows(class_members(students, rnd))
    for name, header, rows in [
        ("orgs.csv", ORGS_HEADER, ORGS),
        ("users.csv", USERS_HEADER, users),
        ("classes.csv", CLASSES_HEADER, classes),
        ("enrollments.csv", ENROLLMENTS_HEADER, enrollments),
    ]:
        (ROSTER / name).write_bytes(csv_text(header, rows).encode("utf-8"))


def main() -> None:
    original = DEMOGRAPHICS.read_bytes()
    lines = original.decode("utf-8-sig").splitlines(keepends=True)
    terminator = "\r\n" if lines[0].endswith("\r\n") else "\n"
    kept = lines[:KEEP_ROWS]
    if len(kept) < KEEP_ROWS or not all(line.endswith(terminator) for line in kept):
        raise SystemExit(f"{DEMOGRAPHICS}: expected {KEEP_ROWS} lines ending {terminator!r}")
    rnd = random.Random(SEED)
    students, special, generated = build_students(rnd, hand_made_students(kept))
    write_roster(students, rnd)

    rows = []
    s = special["not_rostered"]
    rows.append([s.ssid, s.email, *demographic_values(rnd, s)])
    s = special["nickname"]
    rows.append([s.ssid, f"alex.reyes@{STUDENT_DOMAIN}", *demographic_values(rnd, s)])
    s, other = special["conflict_ssid"], special["conflict_email"]
    rows.append([s.ssid, other.email, *demographic_values(rnd, s)])
    s = special["by_email"]
    rows.append(["", s.email, *demographic_values(rnd, s)])
    for s in rnd.sample(generated, CLEAN_ROWS):
        rows.append([s.ssid, s.email, *demographic_values(rnd, s)])
    appended = csv_text("", rows, terminator)[len(terminator) :]
    bom = "\ufeff" if original.startswith(b"\xef\xbb\xbf") else ""
    DEMOGRAPHICS.write_bytes((bom + "".join(kept) + appended).encode("utf-8"))
    print(f"{len(students)} students, {len(rows)} rows appended after row {KEEP_ROWS}")


if __name__ == "__main__":
    main()
