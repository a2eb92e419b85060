"""The deployments people run: `deployments/prefect.yaml` declares them once, for a work pool
(`prefect deploy`) and for `demographics serve`, which builds its deployments from that file;
scheduled as promised, and a file serve cannot carry out is refused, not served otherwise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from flows import pipeline
from flows.deploy import DEPLOYMENTS_FILE, DeploymentsInvalid, deployments

YAML = Path(__file__).resolve().parent.parent / "deployments" / "prefect.yaml"
EXPECTED = {
    "nightly-demographics-sync": "nightly_sync",
    "sync-district-drop": "sync_district_drop",
    "process-drop-file": "process_file",
    "approve-held-sync": "approve_held_sync",
    "discard-held-sync": "discard_held_sync",
    "change-teacher-fields": "change_teacher_fields",
    "apply-access-views": "apply_access_views",
}


def declared() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load(YAML.read_text())["deployments"]}


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


def test_serve_reads_the_work_pool_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEMOGRAPHICS_TIMEZONE", raising=False)
    assert DEPLOYMENTS_FILE == YAML
    served = {d.name: d for d in deployments()}
    assert list(served) == list(declared())  # in the file's order
    for name, d in declared().items():
        assert served[name].entrypoint == d["entrypoint"]
        assert served[name].description == d["description"]
        assert served[name].parameters == d.get("parameters", {})
        assert served[name].concurrency_limit == d.get("concurrency_limit")
        assert served[name].work_pool_name is None  # served in this process
    (schedule,) = served["nightly-demographics-sync"].schedules
    assert schedule.schedule.timezone == "UTC"  # the setting's default


def test_the_work_pool_file_declares_the_same_deployments() -> None:
    found = declared()
    assert set(found) == set(EXPECTED)
    for name, function in EXPECTED.items():
        assert found[name]["entrypoint"] == f"flows/pipeline.py:{function}"
        assert found[name]["work_pool"]["name"] == "{{ $DEMOGRAPHICS_WORK_POOL }}"
    nightly = found["nightly-demographics-sync"]
    assert nightly["schedules"] == [
        {"cron": "0 2 * * *", "timezone": "{{ $DEMOGRAPHICS_TIMEZONE }}"}
    ]
    assert nightly["concurrency_limit"] == 1
    assert all("schedules" not in d for n, d in found.items() if n != nightly["name"])


ONE = {"name": "one", "entrypoint": "flows/pipeline.py:apply_access_views"}


@pytest.mark.parametrize(
    ("deployment", "refusal"),
    [
        ({**ONE, "triggers": [{"enabled": True}]}, "deployment one: serve cannot carry out"),
        ({**ONE, "schedules": [{"interval": 60}]}, "serve builds cron schedules only"),
        ({**ONE, "description": "{{ $HOME }}"}, "deployment one: serve has no $HOME"),
        ({**ONE, "entrypoint": "flows/pipeline.py:FLOW_SETTINGS"}, "is not a flow"),
        ({**ONE, "entrypoint": "flows/nowhere.py:f"}, "flows/nowhere.py:f is not a flow"),
    ],
    ids=["unknown key", "interval", "unknown template", "not a flow", "no module"],
)
def test_a_deployment_serve_cannot_carry_out_is_refused(
    tmp_path: Path, deployment: dict, refusal: str
) -> None:
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump({"deployments": [deployment]}))
    with pytest.raises(DeploymentsInvalid, match=re.escape(refusal)):
        deployments(path)


def test_what_only_a_work_pool_uses_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "prefect.yaml"
    pool = {"work_pool": {"name": "{{ $ANYTHING }}", "job_variables": {"image": "x"}}}
    path.write_text(yaml.safe_dump({"deployments": [{**ONE, **pool, "tags": ["a"]}]}))
    (served,) = deployments(path)
    assert served.work_pool_name is None and served.job_variables == {}
    assert served.tags == ["a"] and served.flow_name == "apply-access-views"


def test_an_unreadable_file_is_refused_in_words(tmp_path: Path) -> None:
    with pytest.raises(DeploymentsInvalid, match=r"cannot read .*missing\.yaml \("):
        deployments(tmp_path / "missing.yaml")


def test_every_parameter_of_the_run_form_is_described_and_none_asks_who_you_are() -> None:
    """The UI's run form shows each parameter's description; who started a run is taken from
    the run (its name and what Prefect recorded), not typed by the person starting it."""
    for served in deployments():
        properties = served._parameter_openapi_schema.properties
        assert "requested_by" not in properties, served.name
        for name, schema in properties.items():
            assert len(schema.get("description") or "") > 15, (served.name, name)
