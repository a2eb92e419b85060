"""The project's docs say what the code does: their tables are checked against the code's own,
and the README links only files a clone of the project has."""

from __future__ import annotations

import re
from pathlib import Path

from schemas.columns import KNOWN_COLUMNS
from schemas.issues import CODES

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "csv-contract.md"


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header row starts with `first_header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_the_contract_lists_every_issue_code_with_its_severity_and_scope() -> None:
    documented = {r[0]: (r[1], r[2]) for r in table_rows(CONTRACT.read_text(), "code")}
    assert documented == {
        str(code): (str(info.severity), str(info.scope)) for code, info in CODES.items()
    }


def test_the_contract_lists_every_column_in_the_codes_order() -> None:
    documented = [r[0] for r in table_rows(CONTRACT.read_text(), "column")]
    assert documented == list(KNOWN_COLUMNS)


def test_the_readme_links_the_projects_own_docs_and_nothing_outside_it() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    local = [link for link in links if "://" not in link]
    assert {"docs/csv-contract.md", "docs/access-model.md", "docs/architecture.md"} <= set(local)
    assert all((ROOT / link).is_file() for link in local), local


def test_every_project_file_the_docs_name_exists() -> None:
    # A restructure that moves code must move the docs' pointers with it.
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    docs += [ROOT / "deployments" / "README.md", ROOT / "sql" / "README.md"]
    named = {
        (doc.name, path)
        for doc in docs
        for path in re.findall(
            r"`((?:bench|docs|flows|schemas|sql|tasks|tests)/[\w./]+)`", doc.read_text()
        )
    }
    assert named  # the pattern still finds the pointers
    missing = sorted((doc, path) for doc, path in named if not (ROOT / path.rstrip("/")).exists())
    assert not missing
