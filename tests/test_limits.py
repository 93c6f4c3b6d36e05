"""Tenant limits (issue 13): submit rates shared by API processes, the waiting quota, timeout caps,
the limits API's roles and validation, /metrics, and `conveyor limits`. Real Redis, real SQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import Backend, ServerProcess, Tenant, configure, make_tenant
from tests.live_support import run_async
from tests.test_cli import conveyor

QUEUE = "other"  # no worker listens on it: submitted jobs stay queued
JOB = {"task": "long_task", "payload": {"n": 1}, "queue": QUEUE}


def limits_url(tenant: str) -> str:
    return f"/api/v1/tenants/{tenant}/limits"


@pytest.fixture
def operator(env: Backend) -> Tenant:
    return make_tenant(role="operator")


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def sample(name: str, value: float, **labels: str) -> str:
    """A Prometheus text line (prometheus_client writes labels in name order)."""
    pairs = ",".join(f'{label}="{labels[label]}"' for label in sorted(labels))
    return f"{name}{{{pairs}}} {float(value)}"


def put_limits(client: TestClient, operator: Tenant, tenant: str, **changes: Any) -> dict[str, Any]:
    response = client.put(limits_url(tenant), json=changes, headers=operator.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


# --- submit rate: one bucket, two API processes -------------------------------------------------


@pytest.fixture(scope="module")
def two_servers(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    logs = tmp_path_factory.mktemp("limit-servers")
    servers = [ServerProcess(backend, logs / f"api-{i}.log").start() for i in range(2)]
    yield servers
    for server in servers:
        server.stop()


def test_two_api_processes_share_a_keys_bucket(
    env: Backend, two_servers: list[ServerProcess], operator: Tenant, tenant: Tenant
):
    """A key's burst of 3 is spent across both processes: its 4th submit is 429 on either."""
    first, second = two_servers
    response = httpx.put(
        f"{first.url}{limits_url(tenant.name)}",
        json={"key_submits_per_minute": 1, "key_submit_burst": 3},
        headers=operator.headers,
    )
    assert response.status_code == 200, response.text
    accepted = [
        httpx.post(f"{server.url}/api/v1/jobs", json=JOB, headers=tenant.headers)
        for server in (first, second, first)
    ]
    assert [r.status_code for r in accepted] == [201, 201, 201]
    # Each 201 says what is left of the tightest bucket (the key's), whichever process answered.
    assert [r.headers["RateLimit-Remaining"] for r in accepted] == ["2", "1", "0"]
    assert {r.headers["RateLimit-Limit"] for r in accepted} == {"3"}
    assert "Retry-After" not in accepted[0].headers
    for server in (second, first):
        refused = httpx.post(f"{server.url}/api/v1/jobs", json=JOB, headers=tenant.headers)
        assert refused.status_code == 429, refused.text
        headers = refused.headers
        # One a minute: the next submit is up to 60 s off (less what refilled while the cold
        # processes answered), a full bucket up to 180 s.
        assert 45 <= int(headers["Retry-After"]) <= 60
        assert headers["RateLimit-Limit"] == "3"
        assert headers["RateLimit-Remaining"] == "0"
        assert 150 <= int(headers["RateLimit-Reset"]) <= 180
        body = refused.json()
        assert body["limit"] == "key_submits_per_minute"
        assert "limited to 1 a minute" in body["detail"] and "this API key" in body["detail"]
    # Another key of the same tenant has its own bucket.
    other_key = make_tenant(role="member", name=tenant.name)
    assert httpx.post(f"{second.url}/api/v1/jobs", json=JOB, headers=other_key.headers).status_code == 201


def test_a_tenants_bucket_is_shared_by_its_keys_and_processes(
    env: Backend, two_servers: list[ServerProcess], operator: Tenant
):
    first, second = two_servers
    keys = [make_tenant(role="member")]
    keys.append(make_tenant(role="member", name=keys[0].name))
    response = httpx.put(
        f"{second.url}{limits_url(keys[0].name)}",
        json={"submits_per_minute": 1, "submit_burst": 4},
        headers=operator.headers,
    )
    assert response.status_code == 200, response.text
    for server, key in ((first, keys[0]), (second, keys[1]), (second, keys[0]), (first, keys[1])):
        assert httpx.post(f"{server.url}/api/v1/jobs", json=JOB, headers=key.headers).status_code == 201
    refused = httpx.post(f"{first.url}/api/v1/jobs", json=JOB, headers=keys[1].headers)
    assert refused.status_code == 429
    assert refused.json()["limit"] == "submits_per_minute"
    assert f"tenant {keys[0].name!r} is limited to 1 a minute" in refused.json()["detail"]
    assert refused.headers["RateLimit-Limit"] == "4"
    assert 45 <= int(refused.headers["Retry-After"]) <= 60  # one a minute

    # What each key used, in /metrics (read from Redis: the same from either process).
    text = httpx.get(f"{second.url}/metrics", headers=operator.headers).text
    for key in keys:
        assert sample("conveyor_submits_total", 2, tenant=key.name, key=key.key_id) in text
    assert sample("conveyor_submits_rate_limited_total", 1, tenant=key.name, key=keys[1].key_id) in text


def test_a_refill_lets_submits_through_again(
    env: Backend, client: TestClient, operator: Tenant, tenant: Tenant
):
    put_limits(client, operator, tenant.name, key_submits_per_minute=60, key_submit_burst=1)  # 1 a second
    assert client.post("/api/v1/jobs", json=JOB, headers=tenant.headers).status_code == 201
    refused = client.post("/api/v1/jobs", json=JOB, headers=tenant.headers)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    time.sleep(1.1)
    assert client.post("/api/v1/jobs", json=JOB, headers=tenant.headers).status_code == 201


def test_a_batch_takes_one_token_per_job(
    env: Backend, redis_client: Any, operator: Tenant, client: TestClient
):
    """`admit_submission(count=n)` is what a batch route calls: n tokens at once, or a 422 when the
    bucket could never hold n; submits made inside `admitted_batch()` take no more."""
    from jobs.access.admission import admit_submission, admitted_batch
    from jobs.actions.submit import submit_job
    from jobs.errors import InvalidRequest, TooManyRequests
    from jobs.history.db import session_scope

    tenant = make_tenant(role="member")
    put_limits(client, operator, tenant.name, submits_per_minute=1, submit_burst=5)
    common = {"tenant": tenant.name, "owner": tenant.key_id, "task": "long_task", "timeout": None}
    with session_scope() as session:
        with pytest.raises(InvalidRequest, match="more than the tenant submit burst of 5"):
            admit_submission(session=session, client=redis_client, count=6, **common)
        admit_submission(session=session, client=redis_client, count=4, **common)
        with admitted_batch():
            for _ in range(4):
                submit_job(session=session, client=redis_client, payload={"n": 1}, queue=QUEUE, **common)
        admit_submission(session=session, client=redis_client, count=1, **common)  # the 5th token
        with pytest.raises(TooManyRequests) as refused:
            admit_submission(session=session, client=redis_client, count=1, **common)
    assert refused.value.headers["RateLimit-Remaining"] == "0"
    assert refused.value.extra["limit"] == "submits_per_minute"


# --- the waiting quota --------------------------------------------------------------------------


def test_max_waiting_refuses_with_a_429_naming_the_quota(
    env: Backend, client: TestClient, operator: Tenant, tenant: Tenant
):
    put_limits(client, operator, tenant.name, max_waiting=2)
    jobs = [client.post("/api/v1/jobs", json=JOB, headers=tenant.headers) for _ in range(2)]
    assert [r.status_code for r in jobs] == [201, 201]
    scheduled = client.post("/api/v1/jobs", json={**JOB, "delay": 3600}, headers=tenant.headers)
    assert scheduled.status_code == 429  # scheduled jobs wait too
    body = scheduled.json()
    assert body["quota"] == "max_waiting" and body["limit"] == 2 and body["waiting"] == 2
    assert client.get(limits_url(tenant.name), headers=tenant.headers).json()["waiting"] == 2
    assert "max_waiting" in body["detail"] and "at most 2" in body["detail"]

    # Another tenant is not held back, and a canceled job frees its place.
    assert client.post("/api/v1/jobs", json=JOB, headers=make_tenant().headers).status_code == 201
    job_id = jobs[0].json()["job_id"]
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=tenant.headers).status_code == 200
    assert client.post("/api/v1/jobs", json=JOB, headers=tenant.headers).status_code == 201

    text = client.get("/metrics", headers=operator.headers).text
    labels = {"tenant": tenant.name, "key": tenant.key_id, "limit": "max_waiting"}
    assert sample("conveyor_submits_refused_total", 1, **labels) in text


def test_max_waiting_holds_exactly_across_processes_that_count_rarely(
    env: Backend, two_servers: list[ServerProcess], operator: Tenant, tenant: Tenant
):
    """Each process counts a tenant's waiting jobs only when its last count could be near the
    quota: 900 jobs already wait (written straight to SQL, unseen by either process's count),
    then submits alternate between the processes until the quota refuses: exactly 1000 wait."""
    import uuid

    import sqlalchemy as sa

    from jobs.access.admission import count_waiting
    from jobs.clock import utcnow
    from jobs.history.db import session_scope
    from jobs.history.models import Job

    first, second = two_servers
    changes = {"max_waiting": 1000, "submits_per_minute": 1200, "submit_burst": 20}
    assert httpx.put(
        f"{first.url}{limits_url(tenant.name)}", json=changes, headers=operator.headers
    ).is_success
    assert httpx.post(f"{first.url}/api/v1/jobs", json=JOB, headers=tenant.headers).status_code == 201
    assert httpx.post(f"{second.url}/api/v1/jobs", json=JOB, headers=tenant.headers).status_code == 201
    now = utcnow()
    rows = [
        {"job_id": str(uuid.uuid4()), "tenant": tenant.name, "task": "long_task", "queue": QUEUE}
        | {"status": "queued", "params": {}, "created_at": now, "updated_at": now}
        for _ in range(898)
    ]
    try:
        with session_scope() as session:
            session.execute(sa.insert(Job), rows)
        refused: set[str] = set()  # the processes that refused on the quota (both must)
        deadline = time.monotonic() + 60
        while len(refused) < 2 and time.monotonic() < deadline:
            for server in (first, second):
                response = httpx.post(f"{server.url}/api/v1/jobs", json=JOB, headers=tenant.headers)
                if response.status_code == 429 and response.json().get("quota") == "max_waiting":
                    refused.add(server.url)
                elif response.status_code == 429:
                    time.sleep(0.05)  # the bucket: 20 a second
                else:
                    assert response.status_code == 201, response.text
        assert refused == {first.url, second.url}
        with session_scope() as session:
            assert count_waiting(session, tenant=tenant.name) == 1000
    finally:
        with session_scope() as session:
            session.execute(sa.delete(Job).where(Job.job_id.in_([r["job_id"] for r in rows])))  # type: ignore[attr-defined]


def test_the_seed_routes_and_the_web_form_are_limited_alike(
    env: Backend, client: TestClient, operator: Tenant, tenant: Tenant
):
    put_limits(client, operator, tenant.name, max_waiting=1)
    assert client.post("/api/v1/jobs", json=JOB, headers=tenant.headers).status_code == 201
    seed = client.post("/submit-job", json={"task": "long_task", "payload": {"n": 1}}, headers=tenant.headers)
    assert seed.status_code == 429 and seed.json()["quota"] == "max_waiting"


# --- timeout caps -------------------------------------------------------------------------------


def test_a_timeout_over_the_default_cap_is_422_naming_it(env: Backend, client: TestClient, tenant: Tenant):
    refused = client.post("/api/v1/jobs", json={**JOB, "timeout": 7 * 86400}, headers=tenant.headers)
    assert refused.status_code == 422
    body = refused.json()
    assert body["limit"] == "max_timeout_seconds" and body["cap"] == 3600
    assert "over tenant" in body["detail"] and "3600 s" in body["detail"]
    assert (
        client.post("/api/v1/jobs", json={**JOB, "timeout": 3600}, headers=tenant.headers).status_code == 201
    )


def test_a_tenants_timeout_cap(env: Backend, client: TestClient, operator: Tenant, tenant: Tenant):
    put_limits(client, operator, tenant.name, max_timeout_seconds=60)
    assert client.post("/api/v1/jobs", json={**JOB, "timeout": 61}, headers=tenant.headers).status_code == 422
    assert client.post("/api/v1/jobs", json={**JOB, "timeout": 60}, headers=tenant.headers).status_code == 201
    assert client.post("/api/v1/jobs", json=JOB, headers=tenant.headers).status_code == 201  # the task's own


def test_a_tasks_caps_from_the_settings_are_enforced_and_served(
    env: Backend, app: Any, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(
        "CONVEYOR_TASK_LIMITS", json.dumps({"long_task": {"max_timeout_seconds": 30, "max_running": 2}})
    )
    configure(env.env())
    try:
        with TestClient(app, headers=tenant.headers) as client:
            refused = client.post("/api/v1/jobs", json={**JOB, "timeout": 31}, headers=tenant.headers)
            assert refused.status_code == 422
            assert "task 'long_task'" in refused.json()["detail"] and refused.json()["cap"] == 30
            assert client.post("/api/v1/jobs", json={**JOB, "timeout": 30}).status_code == 201
            tasks = {t["name"]: t for t in client.get("/api/v1/tasks").json()}
            assert (tasks["long_task"]["max_timeout_seconds"], tasks["long_task"]["max_running"]) == (30, 2)
            assert tasks["always_fails"]["max_running"] == 0
    finally:
        monkeypatch.delenv("CONVEYOR_TASK_LIMITS")
        configure(env.env())


def test_task_limits_setting_refuses_unknown_caps(monkeypatch: pytest.MonkeyPatch):
    from pydantic import ValidationError

    from jobs.settings import Settings

    monkeypatch.setenv("CONVEYOR_ENVIRONMENT", "test")
    monkeypatch.setenv("CONVEYOR_TASK_LIMITS", '{"long_task": {"max_runing": 2}}')
    with pytest.raises(ValidationError, match="unknown caps"):
        Settings()
    monkeypatch.setenv("CONVEYOR_TASK_LIMITS", '{"long_task": {"max_running": -1}}')
    with pytest.raises(ValidationError, match="each cap is 0"):
        Settings()


# --- the limits API: roles and validation -------------------------------------------------------


def test_who_may_read_and_set_limits(env: Backend, client: TestClient, operator: Tenant, tenant: Tenant):
    member = make_tenant(role="member", name=tenant.name)
    assert client.get(limits_url(tenant.name), headers=member.headers).status_code == 403
    own = client.get(limits_url(tenant.name), headers=tenant.headers)  # the tenant's admin
    assert own.status_code == 200
    assert (
        own.json()["overridden"] == [] and own.json()["max_waiting"] == own.json()["defaults"]["max_waiting"]
    )
    other = client.get(limits_url("someone-else"), headers=tenant.headers)
    assert other.status_code == 403 and "own tenant" in other.json()["detail"]
    for key in (tenant, member):
        refused = client.put(limits_url(tenant.name), json={"max_waiting": 5}, headers=key.headers)
        assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    assert client.get(limits_url(tenant.name)).status_code == 401

    changed = put_limits(client, operator, tenant.name, max_waiting=5, max_running=3)
    assert (changed["max_waiting"], changed["max_running"]) == (5, 3)
    assert sorted(changed["overridden"]) == ["max_running", "max_waiting"]
    assert changed["updated_by"] == operator.key_id
    again = put_limits(client, operator, tenant.name, max_waiting=None)  # back to the default
    assert again["max_waiting"] == again["defaults"]["max_waiting"] and again["overridden"] == ["max_running"]
    assert client.get(limits_url(tenant.name), headers=tenant.headers).json()["max_running"] == 3


@pytest.mark.parametrize(
    "body",
    [
        {"max_waiting": -1},
        {"submits_per_minute": 10**12},
        {"max_timeout_seconds": 0},
        {"submit_burst": 0},
        {"max_running": "5"},
        {"max_waiting": 5.5},
        {"max_waiting": True},
        {"max_waiting": [1]},
        {"max_wating": 5},
        {},
    ],
)
def test_hostile_limit_values_are_422(
    env: Backend, client: TestClient, operator: Tenant, body: dict[str, Any]
):
    response = client.put(limits_url("t-hostile"), json=body, headers=operator.headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_a_bad_tenant_name_or_body_is_422(env: Backend, client: TestClient, operator: Tenant):
    assert client.get(limits_url("bad%20name!"), headers=operator.headers).status_code == 422
    assert (
        client.put(limits_url("x" * 65), json={"max_waiting": 1}, headers=operator.headers).status_code == 422
    )
    not_json = client.put(
        limits_url("t-ok"), content=b"{", headers={**operator.headers, "content-type": "application/json"}
    )
    assert not_json.status_code == 422


def test_a_change_reaches_another_process_within_its_cache_time(
    env: Backend, two_servers: list[ServerProcess], operator: Tenant, tenant: Tenant
):
    first, second = two_servers
    assert httpx.post(f"{second.url}/api/v1/jobs", json=JOB, headers=tenant.headers).status_code == 201
    response = httpx.put(
        f"{first.url}{limits_url(tenant.name)}", json={"max_waiting": 1}, headers=operator.headers
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 8  # CONVEYOR_LIMITS_CACHE_SECONDS is 5
    while time.monotonic() < deadline:
        response = httpx.post(f"{second.url}/api/v1/jobs", json=JOB, headers=tenant.headers)
        if response.status_code == 429:
            break
        time.sleep(0.5)
    assert response.status_code == 429 and response.json()["quota"] == "max_waiting"


# --- the CLI ------------------------------------------------------------------------------------


def test_conveyor_limits_show_and_set(
    env: Backend, live_server: ServerProcess, operator: Tenant, tenant: Tenant
):
    from cli.main import LIMIT_OPTIONS
    from jobs.access.limits import LIMIT_NAMES

    assert tuple(LIMIT_OPTIONS) == LIMIT_NAMES  # the CLI offers every limit the API has
    as_operator = ["--url", live_server.url, "--key", operator.key]
    done = conveyor(
        "limits", "set", tenant.name, "--max-waiting", "7", "--submits-per-minute", "120", *as_operator
    )
    assert done.returncode == 0, done.stderr
    assert "max_waiting" in done.stdout and "7  (set for this tenant)" in done.stdout
    done = conveyor("limits", "show", tenant.name, "--json", "--url", live_server.url, "--key", tenant.key)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert (shown["max_waiting"], shown["submits_per_minute"]) == (7, 120)
    done = conveyor("limits", "set", tenant.name, "--default", "max_waiting", "--json", *as_operator)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["overridden"] == ["submits_per_minute"]

    refused = conveyor(
        "limits", "set", tenant.name, "--max-waiting", "7", "--url", live_server.url, "--key", tenant.key
    )
    assert refused.returncode == 1 and "403" in refused.stderr and "operator" in refused.stderr
    assert conveyor("limits", "set", tenant.name, *as_operator).returncode == 2  # nothing to change
    bad = conveyor("limits", "set", tenant.name, "--max-waiting", "-3", *as_operator)
    assert bad.returncode == 2 and "must be 0 or more" in bad.stderr
    huge = conveyor("limits", "set", tenant.name, "--max-waiting", str(10**12), *as_operator)
    assert huge.returncode == 1 and "422" in huge.stderr


def test_readme_names_every_limit_setting():
    """The README's limits table and the settings agree (a user sets what the README names)."""
    from jobs.access.limits import SETTING_OF

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for setting in [*SETTING_OF.values(), "task_limits", "limits_cache_seconds"]:
        assert f"CONVEYOR_{setting.upper()}" in readme, setting


def test_declared_schedules_are_not_rate_limited_and_a_bad_redis_copy_is_ignored(
    env: Backend, client: TestClient, redis_client: Any, operator: Tenant, tenant: Tenant
):
    from jobs.access.admission import admit_submission
    from jobs.access.limits import clear_cache, redis_key
    from jobs.history.db import session_scope

    put_limits(client, operator, tenant.name, submits_per_minute=1, submit_burst=1, max_waiting=1)
    common = {"tenant": tenant.name, "task": "long_task", "timeout": None}
    with session_scope() as session:
        for _ in range(3):  # a refused firing would be lost: cron is the operator's own
            admit_submission(session=session, client=redis_client, owner="cron", **common)
    redis_client.set(redis_key(tenant.name), b"\xff not json")
    clear_cache()
    assert client.get(limits_url(tenant.name), headers=tenant.headers).json()["max_waiting"] == 1
    assert client.post("/api/v1/jobs", json=JOB, headers=tenant.headers).status_code == 201
    refused = client.post("/api/v1/jobs", json=JOB, headers=tenant.headers)  # SQL's limits held
    assert refused.status_code == 429 and refused.json()["limit"] == "submits_per_minute"


def test_the_python_clients_read_and_set_limits(
    env: Backend, live_server: ServerProcess, operator: Tenant, tenant: Tenant
):

    from conveyor_client import Client, ConveyorAPIError
    from conveyor_client.aio import AsyncClient

    with Client(live_server.url, operator.key) as client:
        assert client.set_limits(tenant.name, max_running=4)["max_running"] == 4
    with Client(live_server.url, tenant.key) as client:
        assert client.limits(tenant.name)["max_running"] == 4
        with pytest.raises(ConveyorAPIError) as refused:
            client.set_limits(tenant.name, max_running=5)
        assert refused.value.status_code == 403

    async def steer() -> tuple[dict[str, Any], dict[str, Any]]:
        async with AsyncClient(live_server.url, operator.key) as client:
            return await client.set_limits(tenant.name, max_running=None), await client.limits(tenant.name)

    changed, read = run_async(steer())
    assert changed["max_running"] == read["max_running"] == read["defaults"]["max_running"]
