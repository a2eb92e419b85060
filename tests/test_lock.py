"""The lock: the environment is exactly uv.lock, and a stale lock is refused.

A fresh machine installs uv.lock (`make`), so what passed here yesterday installs the same
tomorrow; these tests hold the checks `make test` relies on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UV = Path(sys.executable).parent / "uv"


def uv(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_PROJECT_ENVIRONMENT": sys.prefix}
    return subprocess.run(
        [str(UV), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def locked_version(name: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (package,) = [p for p in lock["package"] if p["name"] == name]
    return str(package["version"])


def test_the_environment_is_exactly_the_lock() -> None:
    done = uv("sync", "--locked", "--extra", "dev", "--check", "--python", sys.executable, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "Would make no changes" in done.stderr


def test_uv_is_bootstrapped_as_the_lock_pins_it_with_the_locks_hashes() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "uv_requirement.py"), str(ROOT / "uv.lock")],
        capture_output=True,
        text=True,
        check=True,
    )
    requirement = done.stdout.split()
    assert requirement[0] == f"uv=={locked_version('uv')}"
    assert requirement[1:] and all(h.startswith("--hash=sha256:") for h in requirement[1:])
    version = uv("--version", cwd=ROOT).stdout.split()
    assert version[:2] == ["uv", locked_version("uv")]


def test_a_lock_that_pyproject_no_longer_matches_is_refused(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    pyproject = (tmp_path / "pyproject.toml").read_text()
    assert uv("lock", "--check", "--offline", cwd=tmp_path).returncode == 0

    edits = {  # what uv says of each
        "a dependency removed": (
            pyproject.replace('    "css-inline>=0.14",\n', ""),
            "The lockfile at `uv.lock` needs to be updated",
        ),
        "a bound the lock does not meet": (
            pyproject.replace('"polars>=1.30"', '"polars>=99"'),
            "your project depends on polars>=99",
        ),
    }
    for what, (edited, said) in edits.items():
        assert edited != pyproject, what
        (tmp_path / "pyproject.toml").write_text(edited)
        # Online: telling what changed means resolving again, and what that needs is in uv's
        # cache only by chance (a fresh machine's cache holds the installed wheels alone).
        done = uv("lock", "--check", cwd=tmp_path)
        assert done.returncode != 0 and said in done.stderr, (what, done.stderr)
    assert (tmp_path / "uv.lock").read_bytes() == (ROOT / "uv.lock").read_bytes()  # untouched


def test_production_installs_the_locked_runtime_dependencies_only() -> None:
    # README, "In production": pip installs this export (--require-hashes), then the project
    done = uv("export", "--frozen", "--no-emit-project", "--quiet", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    pinned = {
        line.split("==")[0]: line.split("==")[1].split()[0]
        for line in done.stdout.splitlines()
        if "==" in line and not line.startswith(("#", " "))
    }
    assert pinned["prefect"] == locked_version("prefect")
    assert pinned["polars"] == locked_version("polars")
    assert not {"pytest", "uv", "hatchling", "ruff"} & set(pinned)  # the dev extra stays out
    hashed = done.stdout.count("--hash=sha256:")
    assert hashed >= len(pinned)  # every pin carries its hashes
