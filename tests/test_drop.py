"""The district file drop, on a local folder and on a real SFTP server (127.0.0.1, TCP)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from conftest import HEADER, row, write_roster
from sftp_server import SftpServer, sftp_settings
from storehelp import load

from tasks.drop import (
    REASON_DIRECTORY,
    REASON_LINK,
    REASON_NOT_REGULAR,
    REASON_UNSAFE_NAME,
    Drop,
    DropFile,
    DropMisconfigured,
    DropRefused,
    DropUnavailable,
    FileChanged,
    FileGone,
    HostKeyRefused,
    SftpDrop,
    check_district,
    check_name,
    clean_staging,
    host_key_algorithms,
    open_drop,
)
from tasks.settings import Settings

D = "d1"
SSID = "0099887766"
CONTENT = f"{HEADER}\n{row(ssid=SSID, email='secret.student@students.example.org')}\n".encode()
HOUR = 3600
DEMOGRAPHICS = Path(sys.executable).parent / "demographics"


@dataclass
class Env:
    """One backend: its drop, the local folder its files are in, and the SFTP server if any."""

    kind: str
    tmp: Path
    base: Path
    server: SftpServer | None
    overrides: dict[str, Any]

    @property
    def settings(self) -> Settings:
        if self.server is not None:
            return sftp_settings(self.server, self.tmp, **self.overrides)
        values: dict[str, Any] = {
            "drop_url": self.base.as_uri(),
            "home": self.tmp / "home",
            "staging_dir": self.staging,
            "settle_seconds": 0,
        }
        return Settings(**{**values, **self.overrides})

    @property
    def staging(self) -> Path:
        return self.tmp / "staging"

    def drop(self, **overrides: Any) -> Drop:
        self.overrides.update(overrides)
        return open_drop(self.settings)

    def folder(self, district: str = D) -> Path:
        path = self.base / district
        path.mkdir(parents=True, exist_ok=True)
        return path

    def place(
        self, name: str | bytes, data: bytes = CONTENT, age: float = HOUR, district: str = D
    ) -> Path:
        """A file as a district uploads it, last modified `age` seconds ago."""
        folder = os.fsencode(self.folder(district))
        path = os.path.join(folder, os.fsencode(name))
        with open(path, "wb") as f:
            f.write(data)
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
        return Path(os.fsdecode(path))

    def staged(self) -> list[Path]:
        return list(self.staging.iterdir())


@pytest.fixture(params=["local", "sftp"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Env:
    (tmp_path / "staging").mkdir()
    if request.param == "sftp":
        server: SftpServer = request.getfixturevalue("sftp_server")
        return Env("sftp", tmp_path, server.drop_dir, server, {})
    base = tmp_path / "drop"
    base.mkdir()
    return Env("local", tmp_path, base, None, {})


@pytest.fixture
def sftp(sftp_server: SftpServer, tmp_path: Path) -> Env:
    (tmp_path / "staging").mkdir()
    return Env("sftp", tmp_path, sftp_server.drop_dir, sftp_server, {})


# --- listing ------------------------------------------------------------------------------


def test_listing_is_oldest_first_any_case_suffix_and_ignores_other_files(env: Env) -> None:
    env.place("b.csv", age=300)
    env.place("A.CSV", age=600)
    env.place("c.Csv", age=100)
    env.place("README.txt", age=900)
    env.place("old.csv.bak", age=900)
    env.place(".uploading.csv.part", age=900)
    env.place("big.xlsx.filepart", age=900)
    (env.folder() / "preview").mkdir()
    listing = env.drop().list(D)
    assert [f.name for f in listing.ready] == ["A.CSV", "b.csv", "c.Csv"]
    assert listing.settling == listing.too_large == listing.expired == listing.refused == []
    # Plain files of another kind are listed to be told about; uploads in progress are not.
    assert [f.name for f in listing.other] == ["README.txt", "old.csv.bak"]
    first = listing.ready[0]
    assert first.size == len(CONTENT)
    assert first.modified.utcoffset() is not None and first.modified.utcoffset().seconds == 0
    assert abs(first.modified.timestamp() - (time.time() - 600)) < 5


def test_a_missing_district_folder_lists_empty(env: Env) -> None:
    listing = env.drop().list("no-such-district")
    assert (listing.ready, listing.refused) == ([], [])


def test_a_file_modified_within_settle_seconds_is_left_to_settle(env: Env) -> None:
    env.place("uploading.csv", age=5)
    env.place("done.csv", age=120)
    listing = env.drop(settle_seconds=60).list(D)
    assert [f.name for f in listing.settling] == ["uploading.csv"]
    assert [f.name for f in listing.ready] == ["done.csv"]


def test_files_past_retention_expire_whatever_their_size(env: Env) -> None:
    env.place("older.csv", age=9 * 24 * HOUR)
    env.place("big-old.csv", data=b"x" * 5000, age=8 * 24 * HOUR)
    env.place("fresh.csv", age=6 * 24 * HOUR)
    listing = env.drop(retention_days=7, max_file_mb=0.001).list(D)
    assert [f.name for f in listing.expired] == ["older.csv", "big-old.csv"]
    assert [f.name for f in listing.ready] == ["fresh.csv"]
    assert listing.too_large == []


def test_age_is_judged_against_the_given_now(env: Env) -> None:
    env.place("a.csv", age=HOUR)
    drop = env.drop(retention_days=7, settle_seconds=60)
    later = datetime.now(UTC) + timedelta(days=8)
    assert [f.name for f in drop.list(D, now=later).expired] == ["a.csv"]
    earlier = datetime.now(UTC) - timedelta(hours=1, seconds=30)
    assert [f.name for f in drop.list(D, now=earlier).settling] == ["a.csv"]
    with pytest.raises(ValueError, match="timezone-aware"):
        drop.list(D, now=datetime.now())


def test_a_settled_file_over_the_size_limit_is_too_large_and_not_read(env: Env) -> None:
    env.place("big.csv", data=b"x" * 2000)
    env.place("small.csv", data=b"y" * 100)
    drop = env.drop(max_file_mb=0.001)  # 1,048 bytes
    listing = drop.list(D)
    assert [f.name for f in listing.too_large] == ["big.csv"]
    assert [f.name for f in listing.ready] == ["small.csv"]
    reads = []
    if env.server is not None:
        env.server.on_read = lambda: reads.append(1)
    with pytest.raises(DropRefused, match=r"big\.csv is 0\.002 MB, over the limit of 0\.001 MB"):
        drop.fetch(D, "big.csv")
    assert reads == []
    assert env.staged() == []


HOSTILE = {
    "..csv": r"\.\.",
    "a..b.csv": r"\.\.",
    "back\\slash.csv": "path separator",
    "esc\x1b[31m.csv": "control",
    "new\nline.csv": "control",
    "tab\t.csv": "control",
    "rtl\u202egnp.csv": "control",
    "-rf.csv": "starts with '-'",
    ".hidden.csv": "starts with '.'",
}


def test_hostile_names_are_refused_escaped_and_left_alone(env: Env) -> None:
    for name in HOSTILE:
        env.place(name)
    env.place(b"caf\xe9.csv")  # not UTF-8
    env.place("fine name (2).csv")
    listing = env.drop().list(D)
    assert [f.name for f in listing.ready] == ["fine name (2).csv"]
    refused = {r.name: r.reason for r in listing.refused}
    assert set(refused) == {
        "..csv",
        "a..b.csv",
        "back\\\\slash.csv",
        "esc\\x1b[31m.csv",
        "new\\x0aline.csv",
        "tab\\x09.csv",
        "rtl\\u202egnp.csv",
        "-rf.csv",
        ".hidden.csv",
        "caf\\xe9.csv",
    }
    assert all(r.startswith(REASON_UNSAFE_NAME) for r in refused.values())
    assert all(name.isprintable() for name in refused)
    assert len(os.listdir(env.folder())) == len(HOSTILE) + 2  # nothing touched


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../etc/passwd.csv", "path separator"),
        ("a/b.csv", "path separator"),
        ("", "empty"),
        ("x.txt", r"does not end in \.csv"),
        ("report.csv.exe", r"does not end in \.csv"),
        ("n" * 252 + ".csv", "longer than 255"),
        ("nul\x00.csv", "NUL"),
        *HOSTILE.items(),
    ],
)
def test_check_name_refuses_unsafe_names(name: str, why: str) -> None:
    with pytest.raises(DropRefused, match=why) as caught:
        check_name(name)
    assert str(caught.value).isprintable()


@pytest.mark.parametrize("name", ["demographics.csv", "Fall 2025 (final).CSV", "élève_ü.csv"])
def test_check_name_returns_safe_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("code", ["", "../etc", "a/b", "-x", ".", "x" * 65, "d\n1"])
def test_unsafe_district_codes_are_refused(env: Env, code: str) -> None:
    with pytest.raises(DropRefused, match="district code"):
        check_district(code)
    with pytest.raises(DropRefused, match="district code"):
        env.drop().list(code)


def test_links_directories_and_pipes_are_refused_and_never_followed(env: Env) -> None:
    folder = env.folder()
    env.place("target.csv")
    (folder / "link.csv").symlink_to("target.csv")
    (folder / "folder.csv").mkdir()
    os.mkfifo(folder / "pipe.csv")
    drop = env.drop()
    listing = drop.list(D)
    assert [f.name for f in listing.ready] == ["target.csv"]
    assert {r.name: r.reason for r in listing.refused} == {
        "link.csv": REASON_LINK,
        "folder.csv": REASON_DIRECTORY,
        "pipe.csv": REASON_NOT_REGULAR,
    }
    for name, why in [("link.csv", "link"), ("folder.csv", "not a regular"), ("pipe.csv", "not")]:
        with pytest.raises(DropRefused, match=why):
            drop.fetch(D, name)
        with pytest.raises(DropRefused, match=why):
            drop.delete(D, name)
    assert (folder / "link.csv").is_symlink() and (folder / "target.csv").exists()
    assert env.staged() == []


def test_a_link_swapped_in_after_listing_is_refused(env: Env) -> None:
    path = env.place("swap.csv")
    drop = env.drop()
    assert [f.name for f in drop.list(D).ready] == ["swap.csv"]
    (env.base / "elsewhere.csv").write_bytes(b"not a district file")
    path.unlink()
    path.symlink_to("../elsewhere.csv")
    with pytest.raises(DropRefused, match="link"):
        drop.fetch(D, "swap.csv")
    assert env.staged() == []


def test_a_district_folder_that_is_a_link_is_not_read(env: Env) -> None:
    env.place("x.csv", district="real")
    (env.base / "alias").symlink_to("real")
    with pytest.raises(DropMisconfigured, match=r"alias.*link or not a folder"):
        env.drop().list("alias")


def test_a_missing_drop_folder_is_misconfigured(env: Env) -> None:
    env.base.rmdir()
    with pytest.raises(DropMisconfigured, match="drop_url"):
        env.drop().list(D)


def test_the_default_drop_folder_may_not_exist_yet(tmp_path: Path) -> None:
    drop = open_drop(Settings(home=tmp_path / "home", drop_url=None))
    assert drop.description == (tmp_path / "home" / "drop").resolve().as_uri()
    assert drop.list(D).ready == []
    drop.put(D, "demo.csv", CONTENT)
    assert drop.fetch(D, "demo.csv").data == CONTENT


# --- fetch, delete, put ------------------------------------------------------------------


def test_fetch_returns_the_bytes_and_sha256_and_leaves_no_staging_behind(env: Env) -> None:
    data = CONTENT + os.urandom(300_000)  # several SFTP reads
    env.place("upload.csv", data=data)
    drop = env.drop()
    listed = drop.list(D).ready[0]
    fetched = drop.fetch(D, "upload.csv")
    assert fetched.data == data
    assert fetched.size == len(data) == listed.size
    assert fetched.sha256 == hashlib.sha256(data).hexdigest()
    assert fetched.modified == listed.modified
    assert fetched.name == "upload.csv"
    assert SSID not in repr(fetched)
    assert env.staged() == []
    assert (env.folder() / "upload.csv").exists()  # fetching does not delete


def test_a_file_gone_since_listing_is_refused(env: Env) -> None:
    path = env.place("gone.csv")
    drop = env.drop()
    drop.list(D)
    path.unlink()
    with pytest.raises(DropRefused, match=r"gone\.csv is no longer in the drop"):
        drop.fetch(D, "gone.csv")
    with pytest.raises(DropRefused, match="no longer in the drop"):
        drop.fetch("other-district", "gone.csv")
    assert env.staged() == []


def test_a_file_gone_since_listing_is_file_gone_from_fetch_and_delete_with_expect(
    env: Env,
) -> None:
    path = env.place("gone.csv")
    drop = env.drop()
    listed = drop.list(D).ready[0]
    fetched = drop.fetch(D, "gone.csv")
    path.unlink()
    with pytest.raises(FileGone, match=r"^gone\.csv is no longer in the drop$"):
        drop.fetch(D, "gone.csv")
    for expect in (listed, fetched):
        with pytest.raises(FileGone, match=r"^gone\.csv is no longer in the drop$"):
            drop.delete(D, "gone.csv", expect)
    with pytest.raises(FileGone):
        drop.delete("other-district", "gone.csv", expect=fetched)
    assert drop.delete(D, "gone.csv") is False  # without expect: as before
    assert env.staged() == []


def test_delete_with_expect_removes_the_file_that_was_read(env: Env) -> None:
    env.place("same.csv")
    env.place("listed.csv")
    drop = env.drop()
    listed = {f.name: f for f in drop.list(D).ready}
    assert drop.delete(D, "same.csv", drop.fetch(D, "same.csv")) is True
    assert drop.delete(D, "listed.csv", expect=listed["listed.csv"]) is True
    assert os.listdir(env.folder()) == []


@pytest.mark.parametrize("change", ["size", "time"])
def test_a_file_overwritten_after_fetch_is_not_deleted(env: Env, change: str) -> None:
    path = env.place("report.csv", age=HOUR)
    drop = env.drop()
    listed = drop.list(D).ready[0]
    fetched = drop.fetch(D, "report.csv")
    newer = CONTENT + b"0012345679,x@y.org,M\n" if change == "size" else CONTENT.swapcase()
    # the district uploads a corrected file under the same name (time: same size, 2 s later)
    env.place("report.csv", data=newer, age=HOUR - 2)
    for expect in (fetched, listed):
        with pytest.raises(FileChanged) as caught:
            drop.delete(D, "report.csv", expect)
        assert str(caught.value) == (
            "report.csv changed since it was read (size or time differs); left for the next run"
        )
        assert isinstance(caught.value, DropRefused)
    assert path.read_bytes() == newer
    assert drop.fetch(D, "report.csv").data == newer
    assert drop.delete(D, "report.csv") is True  # without expect: as before


def test_delete_with_expect_compares_time_in_whole_seconds(env: Env) -> None:
    # SFTP reports whole seconds; a local listing keeps the fraction: both must match
    path = env.place("frac.csv")
    second = int(time.time()) - HOUR
    os.utime(path, (second + 0.75, second + 0.75))
    drop = env.drop()
    for n, when in enumerate((second, second + 0.75)):
        name = f"frac{n}.csv"
        env.place(name)
        os.utime(env.folder() / name, (second + 0.75, second + 0.75))
        expect = DropFile(name, len(CONTENT), datetime.fromtimestamp(when, UTC))
        assert drop.delete(D, name, expect) is True
    later = DropFile("frac.csv", len(CONTENT), datetime.fromtimestamp(second + 1, UTC))
    with pytest.raises(FileChanged):
        drop.delete(D, "frac.csv", later)
    assert path.exists()


def test_delete_removes_and_says_false_when_already_gone(env: Env) -> None:
    path = env.place("done.csv")
    drop = env.drop()
    assert drop.delete(D, "done.csv") is True
    assert not path.exists()
    assert drop.delete(D, "done.csv") is False
    assert drop.delete("never-seen", "done.csv") is False


def test_put_makes_the_district_folder_and_the_file_appears_whole(env: Env) -> None:
    drop = env.drop()
    drop.put("new-district", "first.csv", CONTENT)
    assert (env.base / "new-district" / "first.csv").read_bytes() == CONTENT
    assert os.listdir(env.base / "new-district") == ["first.csv"]
    assert [f.name for f in drop.list("new-district").ready] == ["first.csv"]
    with pytest.raises(DropRefused):
        drop.put("new-district", "../escape.csv", CONTENT)


def test_no_file_contents_in_logs_or_errors(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tasks.drop")
    env.place("a.csv")
    env.place("big.csv", data=CONTENT * 100)
    env.place("new\nline.csv")
    drop = env.drop(max_file_mb=0.001)
    drop.list(D)
    drop.fetch(D, "a.csv")
    with pytest.raises(DropRefused) as caught:
        drop.fetch(D, "big.csv")
    drop.delete(D, "a.csv")
    text = caplog.text + str(caught.value)
    assert "a.csv" in caplog.text and "new\\x0aline.csv" in caplog.text
    assert SSID not in text and "secret.student" not in text


def test_staging_folder_is_private_while_downloading(sftp: Env) -> None:
    assert sftp.server is not None
    sftp.place("private.csv")
    seen: list[tuple[int, list[int]]] = []

    def look() -> None:
        for folder in sftp.staged():
            files = [stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()]
            seen.append((stat.S_IMODE(folder.stat().st_mode), files))

    sftp.server.on_read = look
    sftp.drop().fetch(D, "private.csv")
    assert seen and all(mode == 0o700 and files in ([], [0o600]) for mode, files in seen)
    assert any(files == [0o600] for _mode, files in seen)
    assert sftp.staged() == []


# --- SFTP: who the server is, who we are, and bad nights ---------------------------------


def test_an_unknown_host_key_is_refused_before_anything_is_fetched(sftp: Env) -> None:
    # known_hosts pins a key for another server only: this one is unknown, not changed
    server = sftp.server
    assert server is not None
    sftp.place("a.csv")
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    server.known_hosts.write_text(f"[127.0.0.1]:{server.port + 1} {other}")
    reads: list[int] = []
    server.on_read = lambda: reads.append(1)
    with pytest.raises(HostKeyRefused) as caught:
        sftp.drop(sftp_attempts=3).fetch(D, "a.csv")
    message = str(caught.value)
    assert f"127.0.0.1:{server.port} is unknown" in message
    assert f"{server.known_hosts} pins no host key for it" in message
    assert server.connections_so_far() == 1  # never retried
    assert reads == [] and sftp.staged() == []


def test_an_empty_known_hosts_file_trusts_nothing(sftp: Env) -> None:
    assert sftp.server is not None
    sftp.server.known_hosts.write_text("")
    with pytest.raises(HostKeyRefused, match="is unknown"):
        sftp.drop(sftp_attempts=3).list(D)
    assert sftp.server.connections_so_far() == 1


def test_a_changed_host_key_is_refused(sftp: Env) -> None:
    assert sftp.server is not None
    drop = sftp.drop(sftp_attempts=3)
    assert drop.list(D).ready == []
    sftp.server.restart(new_host_key=True)
    with pytest.raises(HostKeyRefused) as caught:
        drop.list(D)
    message = str(caught.value)
    assert f"127.0.0.1:{sftp.server.port} presented a host key that" in message
    assert f"{sftp.server.known_hosts} does not pin for it (the server's key changed" in message
    assert sftp.server.connections_so_far() == 2  # the good listing, then one refused try


@pytest.mark.parametrize("pinned_type", ["ssh-ed25519", "ecdsa-sha2-nistp256"])
def test_a_key_that_is_not_pinned_is_refused_at_once_every_time(
    sftp: Env, pinned_type: str
) -> None:
    # Another key of the server's own type, or a key of another type (the server then holds
    # none of the pinned type: that once looked like a lost connection, and was retried).
    server = sftp.server
    assert server is not None
    server.write_known_hosts(asyncssh.generate_private_key(pinned_type))
    drop = sftp.drop(sftp_attempts=3, sftp_backoff_seconds=0)
    for _ in range(50):
        with pytest.raises(HostKeyRefused, match="does not pin for it"):
            drop.list(D)
    assert server.connections_so_far() == 50  # one connection each: never retried


@pytest.mark.parametrize("pinned", [0, 1, 2])
def test_a_server_with_several_key_types_is_trusted_by_any_one_pinned(
    sftp: Env, pinned: int
) -> None:
    # `ssh-keyscan -t rsa` pins one key of a server that holds three: that one is used
    server = sftp.server
    assert server is not None
    server.other_host_keys = [
        asyncssh.generate_private_key("ecdsa-sha2-nistp256"),
        asyncssh.generate_private_key("ssh-rsa", key_size=2048),
    ]
    server.restart()
    keys = [server.host_key, *server.other_host_keys]
    server.write_known_hosts(keys[pinned])
    sftp.place("a.csv")
    assert [f.name for f in sftp.drop(sftp_attempts=1).list(D).ready] == ["a.csv"]
    server.write_known_hosts(asyncssh.generate_private_key("ssh-rsa", key_size=2048))
    with pytest.raises(HostKeyRefused, match="does not pin for it"):
        sftp.drop(sftp_attempts=3).list(D)


def test_a_key_pinned_by_address_is_offered_first_when_the_drop_names_the_host(
    sftp: Env,
) -> None:
    # known_hosts lists the server by its address; the drop URL names it `localhost`
    server = sftp.server
    assert server is not None
    server.other_host_keys = [asyncssh.generate_private_key("ecdsa-sha2-nistp256")]
    server.restart()
    server.write_known_hosts(server.other_host_keys[0])
    url = server.url.replace("127.0.0.1", "localhost")
    assert sftp.drop(drop_url=url, sftp_attempts=1).list(D).ready == []


def test_every_host_key_type_is_offered_the_pinned_ones_first() -> None:
    offered = host_key_algorithms([b"ecdsa-sha2-nistp256"])
    assert offered[0] == "ecdsa-sha2-nistp256"
    assert {"ssh-ed25519", "rsa-sha2-256", "ssh-rsa", "ecdsa-sha2-nistp256"} <= set(offered)
    assert len(offered) == len(set(offered))
    assert set(host_key_algorithms([])) == set(offered)  # pinned or not, every type


def test_a_pinned_key_mismatch_is_refused_at_once_through_the_command_line(
    sftp: Env, db: str, tmp_path: Path
) -> None:
    server = sftp.server
    assert server is not None
    load(db, D, write_roster(tmp_path / "roster", [], district=D))
    server.write_known_hosts(asyncssh.generate_private_key("ecdsa-sha2-nistp256"))
    env = {
        **os.environ,
        "DEMOGRAPHICS_DATABASE_URL": db,
        "DEMOGRAPHICS_HOME": str(tmp_path / "home"),
        "DEMOGRAPHICS_DROP_URL": server.url,
        "DEMOGRAPHICS_SSH_KEY": str(server.client_key),
        "DEMOGRAPHICS_KNOWN_HOSTS": str(server.known_hosts),
        "DEMOGRAPHICS_SFTP_BACKOFF_SECONDS": "0",
    }
    done = subprocess.run(
        [str(DEMOGRAPHICS), "drop", "list", "--district", D],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"127.0.0.1:{server.port} presented a host key" in done.stderr
    assert str(server.known_hosts) in done.stderr
    assert server.connections_so_far() == 1  # refused on the first try of four


def test_a_key_the_server_does_not_accept_is_misconfigured(sftp: Env) -> None:
    assert sftp.server is not None
    other = sftp.tmp / "other_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(other))
    refused = re.escape(f"refused the key {other} for user tester")
    with pytest.raises(DropMisconfigured, match=refused):
        sftp.drop(ssh_key=other, sftp_attempts=3).list(D)
    assert sftp.server.connections_so_far() == 1


def test_sftp_needs_known_hosts_and_a_usable_key(sftp: Env) -> None:
    with pytest.raises(DropMisconfigured, match="needs known_hosts"):
        sftp.drop(known_hosts=None)
    with pytest.raises(DropMisconfigured, match="does not exist"):
        sftp.drop(known_hosts=sftp.tmp / "missing")
    with pytest.raises(DropMisconfigured, match="needs ssh_key"):
        sftp.drop(known_hosts=sftp.server.known_hosts, ssh_key=None)  # type: ignore[union-attr]
    garbage = sftp.tmp / "garbage_key"
    garbage.write_text("not a key\n")
    with pytest.raises(DropMisconfigured, match="cannot be used"):
        sftp.drop(ssh_key=garbage)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://tester@127.0.0.1/drop", "sftp:// or file://"),
        ("sftp://127.0.0.1/drop", "needs a user"),
        ("sftp://tester:hunter2@127.0.0.1/drop", "must not contain a password"),
        ("sftp://tester@:22/drop", "needs a host"),
        ("sftp://tester@127.0.0.1:notaport/drop", "not a valid URL"),
        ("file://server/share", "local folder"),
        ("file:relative/folder", "absolute path"),
    ],
)
def test_bad_drop_urls_are_misconfigured(sftp: Env, url: str, why: str) -> None:
    with pytest.raises(DropMisconfigured, match=why) as caught:
        sftp.drop(drop_url=url)
    assert "hunter2" not in str(caught.value)


def test_the_description_names_the_server_without_secrets(sftp: Env) -> None:
    assert sftp.server is not None
    drop = sftp.drop()
    assert drop.description == f"sftp://tester@127.0.0.1:{sftp.server.port}/drop"


def test_a_server_that_is_down_is_unavailable_after_the_configured_tries(sftp: Env) -> None:
    assert sftp.server is not None
    drop = sftp.drop(sftp_attempts=3, sftp_backoff_seconds=0.05)
    sftp.server.stop()
    started = time.monotonic()
    with pytest.raises(DropUnavailable, match=r"could not be reached after 3 tries: connection"):
        drop.list(D)
    assert time.monotonic() - started >= 0.05 + 0.1


def test_every_try_is_a_new_connection(sftp: Env) -> None:
    assert sftp.server is not None
    sftp.server.reject_connections = True
    with pytest.raises(DropUnavailable, match="after 3 tries"):
        sftp.drop(sftp_attempts=3, sftp_backoff_seconds=0).list(D)
    assert sftp.server.connections_so_far() == 3
    sftp.server.reject_connections = False
    assert sftp.drop().list(D).ready == []


def test_a_connection_lost_mid_download_is_retried(sftp: Env) -> None:
    assert sftp.server is not None
    data = CONTENT + os.urandom(600_000)
    sftp.place("flaky.csv", data=data)
    sftp.server.drop_transfers(1)
    fetched = sftp.drop(sftp_attempts=2).fetch(D, "flaky.csv")
    assert fetched.data == data and fetched.sha256 == hashlib.sha256(data).hexdigest()
    assert sftp.server.connections_so_far() == 2 and sftp.server.transfers_to_drop == 0
    assert sftp.staged() == []


def test_a_connection_lost_on_every_try_leaves_the_file_and_no_staging(sftp: Env) -> None:
    assert sftp.server is not None
    path = sftp.place("flaky.csv", data=CONTENT + os.urandom(600_000))
    sftp.server.drop_transfers(5)
    with pytest.raises(DropUnavailable, match="after 2 tries") as caught:
        sftp.drop(sftp_attempts=2).fetch(D, "flaky.csv")
    assert SSID not in str(caught.value)
    assert sftp.server.transfers_to_drop == 3
    assert sftp.staged() == []
    assert path.exists()


def test_the_drop_works_from_a_thread_running_an_event_loop(sftp: Env) -> None:
    sftp.place("a.csv")
    drop = sftp.drop()

    async def inside_a_loop() -> list[str]:
        return [f.name for f in drop.list(D).ready]

    assert asyncio.run(inside_a_loop()) == ["a.csv"]


def test_a_generic_failure_mid_download_is_retried(sftp: Env) -> None:
    assert sftp.server is not None
    data = CONTENT + os.urandom(600_000)
    sftp.place("flaky.csv", data=data)
    sftp.server.fail_transfers(1)
    fetched = sftp.drop(sftp_attempts=2).fetch(D, "flaky.csv")
    assert fetched.data == data
    assert sftp.server.connections_so_far() == 2 and sftp.server.transfers_to_fail == 0
    assert sftp.staged() == []


def test_a_failure_then_a_hang_up_mid_download_is_retried(sftp: Env) -> None:
    # the failure reply reaches the client first, then the connection ends
    assert sftp.server is not None
    data = CONTENT + os.urandom(600_000)
    sftp.place("flaky.csv", data=data)
    sftp.server.fail_transfers(1, hang_up=True)
    fetched = sftp.drop(sftp_attempts=2).fetch(D, "flaky.csv")
    assert fetched.data == data
    assert sftp.server.connections_so_far() == 2 and sftp.server.transfers_to_fail == 0


def test_a_failure_on_every_try_is_unavailable(sftp: Env) -> None:
    assert sftp.server is not None
    path = sftp.place("flaky.csv", data=CONTENT + os.urandom(600_000))
    sftp.server.fail_transfers(5)
    with pytest.raises(DropUnavailable, match="after 2 tries") as caught:
        sftp.drop(sftp_attempts=2).fetch(D, "flaky.csv")
    assert SSID not in str(caught.value)
    assert sftp.server.transfers_to_fail == 3
    assert sftp.staged() == [] and path.exists()


def test_nothing_in_the_home_ssh_folder_is_used(
    sftp: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncssh's defaults read ~/.ssh: X.509 CAs (ca-bundle.crt, crt/) that could vouch for a
    # host instead of known_hosts, default keys and their .pub files, known_hosts, config
    assert sftp.server is not None
    ssh = tmp_path / "home-dir" / ".ssh"
    (ssh / "crt").mkdir(parents=True)
    unreadable = "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
    (ssh / "ca-bundle.crt").write_text(unreadable)
    (ssh / "crt" / "00000000.0").write_text(unreadable)
    for name in ("id_ed25519", "id_rsa", "id_ed25519.pub", "id_ed25519-cert.pub", "config"):
        (ssh / name).write_text("garbage\n")
    (ssh / "known_hosts").write_text(sftp.server.known_hosts_line())
    monkeypatch.setenv("HOME", str(ssh.parent))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    sftp.place("a.csv")
    drop = sftp.drop()
    assert [f.name for f in drop.list(D).ready] == ["a.csv"]
    sftp.server.known_hosts.write_text("")  # ~/.ssh/known_hosts pins the key: not consulted
    with pytest.raises(HostKeyRefused):
        drop.list(D)


def test_the_ssh_key_is_read_once_per_drop(sftp: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # open_drop reads and checks the key; every connection after it uses that one reading
    assert sftp.server is not None
    reads: list[object] = []
    real = asyncssh.read_private_key

    def counting(*args: Any, **kwargs: Any) -> asyncssh.SSHKey:
        reads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(asyncssh, "read_private_key", counting)
    sftp.place("a.csv")
    drop = sftp.drop()
    for _ in range(3):
        assert [f.name for f in drop.list(D).ready] == ["a.csv"]
    assert drop.delete(D, "a.csv", drop.fetch(D, "a.csv")) is True
    assert reads == [sftp.server.client_key]


def test_a_drop_made_without_its_key_reads_it_at_the_first_connection(
    sftp: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sftp.server is not None
    opened = sftp.drop()
    assert isinstance(opened, SftpDrop)

    def made(ssh_key: Path) -> SftpDrop:
        return SftpDrop(
            host=opened.host,
            port=opened.port,
            username=opened.username,
            base=opened.base,
            ssh_key=ssh_key,
            known_hosts=opened.known_hosts,
            settings=opened.settings,
        )

    garbage = sftp.tmp / "garbage_key"
    garbage.write_text("not a key\n")
    with pytest.raises(DropMisconfigured, match=f"^the SSH key {re.escape(str(garbage))} cannot"):
        made(garbage).list(D)
    assert sftp.server.connections_so_far() == 0
    reads: list[object] = []
    real = asyncssh.read_private_key
    monkeypatch.setattr(asyncssh, "read_private_key", lambda p: reads.append(p) or real(p))
    drop = made(sftp.server.client_key)
    assert drop.list(D).ready == drop.list(D).ready == []
    assert reads == [sftp.server.client_key]


# --- stale staging folders ----------------------------------------------------------------


def _staging_folder(parent: Path, age: float, content: bytes | None = CONTENT) -> Path:
    """A staging folder as a killed fetch leaves it, last touched `age` seconds ago."""
    folder = Path(tempfile.mkdtemp(prefix="demographics-", dir=parent))
    stamp = time.time() - age
    if content is not None:
        (folder / "download.csv").write_bytes(content)
        os.utime(folder / "download.csv", (stamp, stamp))
    os.utime(folder, (stamp, stamp))
    return folder


def test_clean_staging_removes_only_old_staging_folders(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    settings = Settings(home=tmp_path / "home", staging_dir=staging)
    old = _staging_folder(staging, 2 * HOUR)
    old_empty = _staging_folder(staging, 2 * HOUR, content=None)
    fresh = _staging_folder(staging, 60)
    # a download still being written: the folder is old, the file it writes is not
    writing = _staging_folder(staging, 2 * HOUR)
    os.utime(writing / "download.csv")
    # old, but not what a fetch leaves: another program's folder, a file, another prefix
    other = _staging_folder(staging, 2 * HOUR)
    (other / "notes.txt").write_text("not ours")
    os.utime(other, (time.time() - 2 * HOUR,) * 2)
    prefect = staging / "demographics-test-prefect-abc"
    prefect.mkdir()
    plain_file = staging / "demographics-zzzzzzzz"
    plain_file.write_bytes(b"a file")
    for path in (prefect, plain_file):
        os.utime(path, (time.time() - 2 * HOUR,) * 2)

    assert clean_staging(settings) == 2
    assert not old.exists() and not old_empty.exists()
    assert fresh.exists() and writing.exists() and other.exists()
    assert prefect.exists() and plain_file.exists()
    assert clean_staging(settings, older_than_seconds=30) == 1  # now `fresh` is old enough
    assert not fresh.exists()


def test_clean_staging_never_follows_links(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = _staging_folder(elsewhere, 2 * HOUR)  # looks exactly like a stale folder
    (staging / "demographics-x").symlink_to(target)
    (staging / "demographics-abcd1234").symlink_to(target)
    os.utime(staging / "demographics-abcd1234", (0, 0), follow_symlinks=False)
    stale = _staging_folder(staging, 2 * HOUR)
    settings = Settings(home=tmp_path / "home", staging_dir=staging)
    assert clean_staging(settings, older_than_seconds=0) == 1
    assert not stale.exists()
    assert (target / "download.csv").read_bytes() == CONTENT
    assert (staging / "demographics-x").is_symlink()
    assert (staging / "demographics-abcd1234").is_symlink()


def test_clean_staging_defaults_to_the_system_temp_and_a_missing_folder_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old = _staging_folder(tmp_path, 2 * HOUR)
    assert clean_staging(Settings(home=tmp_path / "home", staging_dir=None)) == 1
    assert not old.exists()
    missing = Settings(home=tmp_path / "home", staging_dir=tmp_path / "missing")
    assert clean_staging(missing) == 0


# --- the district's subfolders -----------------------------------------------------------


def test_roster_and_preview_are_folders_of_their_own_with_their_own_names(env: Env) -> None:
    drop = env.drop()
    env.place("demographics.csv")
    drop.put(D, "users.csv", b"sourcedId\n", folder="roster")
    drop.put(D, "export.ZIP", b"PK", folder="roster")
    drop.put(D, "check.csv", CONTENT, folder="preview")
    assert [f.name for f in drop.list(D).ready] == ["demographics.csv"]  # folders not its files
    roster = drop.list(D, folder="roster", now=datetime.now(UTC) + timedelta(hours=1))
    assert sorted(f.name for f in roster.ready) == ["export.ZIP", "users.csv"]
    preview = drop.list(D, folder="preview", now=datetime.now(UTC) + timedelta(hours=1))
    assert [f.name for f in preview.ready] == ["check.csv"]
    fetched = drop.fetch(D, "check.csv", folder="preview")
    assert fetched.data == CONTENT
    assert drop.delete(D, "check.csv", fetched, folder="preview") is True
    assert not (env.base / D / "preview" / "check.csv").exists()
    assert (env.base / D / "demographics.csv").exists()
    with pytest.raises(DropRefused, match=r"does not end in \.csv"):
        drop.put(D, "roster.zip", b"PK", folder="preview")  # a .zip is taken only as a roster
    with pytest.raises(DropRefused, match="not roster/ or preview/"):
        drop.list(D, folder="../other")


def test_a_subfolder_that_is_missing_a_link_or_a_file_reads_as_empty(env: Env) -> None:
    drop = env.drop()
    env.place("x.csv")
    assert drop.list(D, folder="roster").ready == []
    (env.base / D / "preview").symlink_to(env.base / D)  # the district's own upload
    env.place("roster", data=b"a file where the folder should be")
    for folder in ("preview", "roster"):
        assert drop.list(D, folder=folder).ready == []
    with pytest.raises(FileGone):  # never read through the link
        drop.fetch(D, "x.csv", folder="preview")
    assert drop.delete(D, "x.csv", folder="preview") is False
    assert (env.base / D / "x.csv").exists()
    # In the district folder, the file named roster is one of another kind: told, then expired.
    assert [f.name for f in drop.list(D).other] == ["roster"]
