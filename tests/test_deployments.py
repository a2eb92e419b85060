"""The deployments people run: the ones `demographics serve` serves and the ones
`deployments/prefect.yaml` declares for a work pool must be the same, scheduled as promised."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows import pipeline
from flows.deploy import deployments

YAML = Path(__file__).resolve().parent.parent / "deployments" / "prefect.yaml"
EXPECTED = {
    "nightly-demographics-sync": "nightly_sync",
    "process-drop-file": "process_file",
    "approve-held-sync": "approve_held_sync",
    "discard-held-sync": "discard_held_sync",
    "change-teacher-fields": "change_teacher_fields",
    "apply-access-views": "apply_access_views",
}


def test_served_deployments_run_nightly_at_two_in_the_configured_zone_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEMOGRAPHICS_TIMEZONE", "America/Chicago")
    served = {d.name: d for d in deployments()}
    assert set(served) == set(EXPECTED)
    nightly = served["nightly-demographics-sync"]
    (schedule,) = nightly.schedules
    assert schedule.schedule.cron == "0 2 * * *"
    assert schedule.schedule.timezone == "America/Chicago"
    assert nightly.concurrency_limit == 1
    assert served["process-drop-file"].parameters == {"mode": "sync"}
    for name, deployment in served.items():
        assert deployment.flow_name == getattr(pipeline, EXPECTED[name]).name
        if name != "nightly-demographics-sync":
            assert not deployment.schedules  # manual only


def test_the_work_pool_file_declares_the_same_deployments() -> None:
    declared = {d["name"]: d for d in yaml.safe_load(YAML.read_text())["deployments"]}
    assert set(declared) == set(EXPECTED)
    for name, function in EXPECTED.items():
        assert declared[name]["entrypoint"] == f"flows/pipeline.py:{function}"
        assert declared[name]["work_pool"]["name"] == "{{ $DEMOGRAPHICS_WORK_POOL }}"
    nightly = declared["nightly-demographics-sync"]
    assert nightly["schedules"] == [
        {"cron": "0 2 * * *", "timezone": "{{ $DEMOGRAPHICS_TIMEZONE }}"}
    ]
    assert nightly["concurrency_limit"] == 1
    assert all("schedules" not in d for n, d in declared.items() if n != nightly["name"])
