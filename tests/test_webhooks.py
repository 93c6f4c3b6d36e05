"""Webhooks end to end: a real worker's sender posts signed deliveries to a loopback receiver."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings, get_settings
from jobs.webhooks.destinations import RefusedDestination, check_destination
from jobs.webhooks.signing import verify
from tests.conftest import Backend, Tenant, WorkerProcess, make_tenant
from tests.services import wait_until
from tests.test_jobs_e2e import submit, wait_status
from tests.webhook_receiver import Receiver


class Senders:
    """The one worker that sends webhooks in this module's tests (the shared workers send none)."""

    def __init__(self, backend: Backend, directory: Path) -> None:
        self.backend = backend
        self.directory = directory
        self.generation = 0
        self.process: WorkerProcess | None = None

    def start(self) -> None:
        self.generation += 1
        name = f"hooks-{self.backend.name}-{uuid.uuid4().hex[:6]}"
        self.process = WorkerProcess(
            self.backend,
            self.directory / f"senders-{self.generation}.log",
            name,
            extra_env={"CONVEYOR_WEBHOOK_SENDERS": "4"},
            queues="isolated",
            args=("--concurrency", "1"),
        ).start()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill_hard()


@pytest.fixture(scope="module")
def senders(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Senders]:
    running = Senders(backend, tmp_path_factory.mktemp("senders"))
    running.start()
    yield running
    if running.process is not None:
        running.process.stop()


@pytest.fixture
def receiver(senders: Senders) -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def register(api: TestClient, url: str, events: list[str], **extra: Any) -> dict[str, Any]:
    response = api.post("/api/v1/webhooks", json={"url": url, "events": events, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def deliveries(api: TestClient, webhook_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/api/v1/webhooks/{webhook_id}/deliveries")
    assert response.status_code == 200, response.text
    return response.json()["items"]


def wait_delivery(api: TestClient, webhook_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
    return wait_until(
        lambda: next((d for d in deliveries(api, webhook_id) if d["status"] == status), None),
        timeout=timeout,
        message=f"a {status} delivery for {webhook_id}",
    )


def path() -> str:
    return f"/hook-{uuid.uuid4().hex[:8]}"


def test_a_finished_and_a_failed_job_are_delivered_signed(
    api: TestClient, worker: Any, receiver: Receiver
) -> None:
    where = path()
    hook = register(api, receiver.url + where, ["job.finished", "job.failed"])
    assert hook["secret"].startswith("whsec_")
    listed = api.get("/api/v1/webhooks").json()["items"]
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]

    done = submit(api, "long_task", {"n": 2, "delay": 0.01})
    failed = submit(api, "always_fails", {})
    wait_until(lambda: len(receiver.requests(where)) >= 2, timeout=30, message="two deliveries")
    got = {json.loads(r.body)["data"]["job_id"]: r for r in receiver.requests(where)}
    assert set(got) == {done["job_id"], failed["job_id"]}
    for request in got.values():
        assert verify(hook["secret"], request.headers, request.body, now=int(time.time()))
        assert not verify(hook["secret"], request.headers, request.body + b" ", now=int(time.time()))
    finished = json.loads(got[done["job_id"]].body)
    assert finished["type"] == "job.finished" and finished["data"]["status"] == "finished"
    assert finished["data"]["result"] is not None and finished["data"]["seq"] >= 3
    assert json.loads(got[failed["job_id"]].body)["type"] == "job.failed"

    def all_delivered() -> list[dict[str, Any]] | None:
        found = deliveries(api, hook["id"])
        return found if len(found) == 2 and all(d["status"] == "delivered" for d in found) else None

    listed_deliveries = {d["subject"]: d for d in wait_until(all_delivered, message="both delivered")}
    one = listed_deliveries[done["job_id"]]
    assert one["id"] == got[done["job_id"]].headers["webhook-id"]
    assert one["attempts"] == 1 and one["attempt_log"][0]["status_code"] == 200


def test_500s_and_timeouts_are_retried_with_the_same_id_then_resent(
    api: TestClient, worker: Any, receiver: Receiver
) -> None:
    where = path()
    receiver.plan.steps = [500, 503, ("sleep", 2.5), 200]  # the sleep is past CONVEYOR_WEBHOOK_TIMEOUT
    hook = register(api, receiver.url + where, ["job.finished"])
    job = submit(api, "long_task", {"n": 1})
    delivered = wait_delivery(api, hook["id"], "delivered", timeout=40)
    log = delivered["attempt_log"]
    assert [a["status_code"] for a in log[:2]] == [500, 503]
    assert log[2]["status_code"] is None and "timed out" in log[2]["error"]
    assert log[-1]["status_code"] == 200 and delivered["attempts"] == len(log) >= 4
    ids = {r.headers["webhook-id"] for r in receiver.requests(where)}
    assert ids == {delivered["id"]}
    stamps = [r.at for r in receiver.requests(where)]
    assert all(b - a >= 0.3 * 0.8 for a, b in itertools.pairwise(stamps))  # each retry waited
    assert delivered["payload"]["data"]["job_id"] == job["job_id"]

    before = len(receiver.requests(where))
    resent = api.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{delivered['id']}/resend")
    assert resent.status_code == 202, resent.text
    wait_until(lambda: len(receiver.requests(where)) > before, message="the re-send")
    again = receiver.requests(where)[-1]
    assert again.headers["webhook-id"] == delivered["id"]
    assert verify(hook["secret"], again.headers, again.body, now=int(time.time()))
    missing = api.post(f"/api/v1/webhooks/{hook['id']}/deliveries/msg_nope/resend")
    assert missing.status_code == 404


def test_a_delivery_that_keeps_failing_is_marked_failed(
    api: TestClient, worker: Any, receiver: Receiver
) -> None:
    from sqlmodel import update

    from jobs.clock import utcnow
    from jobs.history.db import session_scope
    from jobs.history.models import WebhookDelivery

    where = path()
    receiver.plan.steps = [500]
    hook = register(api, receiver.url + where, ["job.finished"])
    submit(api, "long_task", {"n": 1})
    wait_until(lambda: receiver.requests(where), timeout=20, message="a first attempt")
    with session_scope() as session:  # its retry window closes now, not in days
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == hook["id"])
            .values(give_up_at=utcnow())
        )
    failed = wait_delivery(api, hook["id"], "failed")
    assert failed["next_attempt_at"] is None and failed["last_status_code"] == 500
    assert all(a["status_code"] == 500 for a in failed["attempt_log"])


def test_a_dead_endpoint_delays_no_other(api: TestClient, worker: Any, receiver: Receiver) -> None:
    slow, quick = path(), path()
    receiver.plan.steps = [200]
    with Receiver() as dead:
        dead.plan.steps = [("sleep", 5)]
        register(api, dead.url + slow, ["job.finished"])
        register(api, receiver.url + quick, ["job.finished"])
        started = time.monotonic()
        submit(api, "long_task", {"n": 1})
        wait_until(lambda: receiver.requests(quick), timeout=20, message="the quick endpoint's delivery")
        took = time.monotonic() - started
        assert took < 4, f"the quick endpoint waited {took:.1f}s"


def test_progress_deliveries_keep_the_minimum_interval(
    api: TestClient, worker: Any, receiver: Receiver
) -> None:
    where = path()
    hook = register(api, receiver.url + where, ["job.progress", "job.finished"], progress_interval=1.5)
    assert hook["progress_interval"] == 1.5
    job = submit(api, "long_task", {"n": 40, "delay": 0.1})
    wait_status(api, job["job_id"], {"finished"}, timeout=30)
    wait_until(
        lambda: any(json.loads(r.body)["type"] == "job.finished" for r in receiver.requests(where)),
        message="the end",
    )
    progress = [json.loads(r.body) for r in receiver.requests(where)]
    progress = [body for body in progress if body["type"] == "job.progress"]
    assert 1 <= len(progress) <= 4  # about 4 s of a job journaling its progress each second
    assert all(body["data"]["status"] == "started" for body in progress)
    # At most one per 1.5 s of the job's clock, however many processes applied its progress.
    buckets = [
        datetime.fromisoformat(b["timestamp"].replace("Z", "+00:00")).timestamp() // 1.5 for b in progress
    ]
    assert len(set(buckets)) == len(buckets)


def test_redirects_are_not_followed(api: TestClient, worker: Any, receiver: Receiver) -> None:
    where, elsewhere = path(), path()
    receiver.plan.steps = [302]
    receiver.plan.location = receiver.url + elsewhere
    hook = register(api, receiver.url + where, ["job.finished"])
    submit(api, "long_task", {"n": 1})
    wait_until(lambda: receiver.requests(where), timeout=20, message="a first attempt")
    pending = wait_until(
        lambda: next((d for d in deliveries(api, hook["id"]) if d["attempt_log"]), None), message="an attempt"
    )
    assert "redirects are not followed" in pending["attempt_log"][0]["error"]
    assert receiver.requests(elsewhere) == []


# --- who may manage them, and what is refused ---------------------------------------------------


def test_members_are_refused_and_tenants_see_only_their_own(
    app: Any, tenant: Tenant, receiver: Receiver
) -> None:
    member = make_tenant("member", name=tenant.name)
    other = make_tenant("admin")
    operator = make_tenant("operator")
    with TestClient(app, headers=tenant.headers) as admin:
        hook = register(admin, receiver.url, ["job.finished"])
    with TestClient(app, headers=member.headers) as client:
        refused = client.get("/api/v1/webhooks")
        assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    with TestClient(app, headers=other.headers) as client:
        assert client.get(f"/api/v1/webhooks/{hook['id']}").status_code == 404
        assert client.delete(f"/api/v1/webhooks/{hook['id']}").status_code == 404
        assert (
            client.post(
                "/api/v1/webhooks",
                json={"url": receiver.url, "events": ["job.finished"], "tenant": tenant.name},
            ).status_code
            == 403
        )
    with TestClient(app, headers=operator.headers) as client:
        assert client.get(f"/api/v1/webhooks/{hook['id']}").status_code == 200
        everywhere = register(client, receiver.url, ["job.failed"], tenant="*")
        assert everywhere["tenant"] is None
        assert client.delete(f"/api/v1/webhooks/{everywhere['id']}").status_code == 204
    with TestClient(app, headers=tenant.headers) as admin:
        assert admin.delete(f"/api/v1/webhooks/{hook['id']}").status_code == 204
        assert admin.get("/api/v1/webhooks").json()["items"] == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"url": "ftp://example.com/x", "events": ["job.finished"]}, "must start with"),
        ({"url": "https://user:pw@example.com/x", "events": ["job.finished"]}, "credentials"),
        ({"url": "https://example.com/x", "events": ["job.done"]}, "Unknown webhook events"),
        ({"url": "https://example.com/x", "events": []}, "events"),
        (
            {"url": "https://example.com/x", "events": ["job.finished"], "progress_interval": 3},
            "job.progress",
        ),
        ({"url": "https://example.com/x", "events": ["job.progress"], "progress_interval": 0.1}, "at least"),
        ({"url": "http://10.1.2.3/x", "events": ["job.finished"]}, "not a public address"),
        ({"url": "http://169.254.169.254/latest/meta-data", "events": ["job.finished"]}, "not a public"),
        ({"url": "http://[::1]:8080/x", "events": ["job.finished"]}, "not a public address"),
        ({"url": "http://[::ffff:192.168.0.1]/x", "events": ["job.finished"]}, "not a public address"),
        ({"url": "http://100.64.0.1/x", "events": ["job.finished"]}, "not a public address"),
        ({"url": "https://no-such-host.invalid/x", "events": ["job.finished"]}, "does not resolve"),
    ],
)
def test_bad_registrations_are_422_with_a_reason(api: TestClient, body: dict[str, Any], says: str) -> None:
    response = api.post("/api/v1/webhooks", json=body)
    assert response.status_code == 422, response.text
    assert says in json.dumps(response.json())


def test_loopback_is_refused_unless_allowed(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_WEBHOOK_ALLOWED_HOSTS", "[]")
    get_settings.cache_clear()
    try:
        for url in ("http://127.0.0.1:9/x", "http://localhost:9/x", "http://127.1/x"):
            response = api.post("/api/v1/webhooks", json={"url": url, "events": ["job.finished"]})
            assert response.status_code == 422 and "not a public address" in response.text, url
        monkeypatch.setenv("CONVEYOR_WEBHOOK_ALLOWED_HOSTS", '["127.0.0.0/8"]')
        get_settings.cache_clear()
        assert check_destination("http://127.0.0.1:9/x", get_settings()).addresses
    finally:
        monkeypatch.delenv("CONVEYOR_WEBHOOK_ALLOWED_HOSTS")
        get_settings.cache_clear()


def test_production_takes_https_only_and_checks_again_at_send_time(receiver: Receiver) -> None:
    import httpx

    from jobs.webhooks.sender import post

    production = Settings(environment="production", secret_key="p" * 8 + "roduction-secret-Xq93mZk4Lw8")
    with pytest.raises(RefusedDestination, match="https://"):
        check_destination("http://example.com/x", production)
    refusing = Settings(webhook_allowed_hosts=[])
    with httpx.Client() as http:
        outcome = post(
            http, receiver.url + "/x", secret="whsec_AAAA", msg_id="msg_1", body=b"{}", settings=refusing
        )
    assert outcome.status_code is None and outcome.error and outcome.error.startswith("refused")
    assert receiver.requests() == []


def test_retry_delays_double_with_jitter_up_to_the_cap() -> None:
    from jobs.webhooks.sender import retry_delay

    settings = Settings(webhook_retry_base=2, webhook_retry_max_delay=60)
    for attempts, base in ((1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (30, 60)):
        delays = [retry_delay(attempts, settings) for _ in range(50)]
        assert all(base * 0.8 <= d <= base * 1.2 for d in delays), (attempts, delays)
        assert len(set(delays)) > 1  # jittered


# --- the CLI and the page -----------------------------------------------------------------------


def test_the_cli_adds_lists_and_removes(
    env: Any, live_server: Any, tenant: Tenant, receiver: Receiver
) -> None:
    from tests.test_cli import conveyor

    common = ["--url", live_server.url, "--key", tenant.key]
    added = conveyor(
        "webhooks", "add", receiver.url + "/cli", "--event", "job.failed", *common, env=env.env()
    )
    assert added.returncode == 0, added.stderr
    hook_id = added.stdout.split()[0]
    assert added.stdout.strip().splitlines()[-1].startswith("whsec_")
    listed = conveyor("webhooks", "list", *common, env=env.env())
    assert hook_id in listed.stdout and "job.failed" in listed.stdout
    bad = conveyor("webhooks", "add", "ftp://x/y", *common, env=env.env())
    assert bad.returncode != 0 and "must start with" in bad.stderr
    removed = conveyor("webhooks", "rm", hook_id, *common, env=env.env())
    assert removed.returncode == 0, removed.stderr
    assert hook_id not in conveyor("webhooks", "list", *common, env=env.env()).stdout


def test_the_page_registers_shows_the_secret_once_and_deletes(
    app: Any, tenant: Tenant, receiver: Receiver
) -> None:
    from tests.web_support import csrf_from, sign_in

    with TestClient(app) as client:
        sign_in(client, tenant.key)
        page = client.get("/webhooks")
        assert page.status_code == 200 and "No endpoints yet" in page.text
        csrf = csrf_from(page.text)
        form = {"csrf_token": csrf, "url": receiver.url + "/page", "events": ["job.finished", "job.canceled"]}
        created = client.post("/webhooks", data=form)
        assert created.status_code == 201 and 'id="webhook-secret">whsec_' in created.text
        again = client.get("/webhooks")
        assert receiver.url + "/page" in again.text and "whsec_" not in again.text
        refused = client.post("/webhooks", data={**form, "url": "http://10.0.0.1/x"})
        assert refused.status_code == 422 and "not a public address" in refused.text
        no_token = client.post("/webhooks", data={"url": receiver.url, "events": ["job.finished"]})
        assert no_token.status_code == 403
        hook_id = api_hooks(app, tenant)[0]["id"]
        deleted = client.post(
            f"/webhooks/{hook_id}/delete", data={"csrf_token": csrf}, follow_redirects=False
        )
        assert deleted.status_code == 303 and api_hooks(app, tenant) == []
    member = make_tenant("member")
    with TestClient(app) as client:
        sign_in(client, member.key)
        assert client.get("/webhooks").status_code == 403


def api_hooks(app: Any, tenant: Tenant) -> list[dict[str, Any]]:
    with TestClient(app, headers=tenant.headers) as client:
        items: list[dict[str, Any]] = client.get("/api/v1/webhooks").json()["items"]
        return items


def test_a_delivery_survives_its_sender_being_killed(
    api: TestClient, worker: Any, senders: Senders, receiver: Receiver
) -> None:
    """The outbox is SQL: a delivery still pending when every sender dies is sent by the next."""
    import socket

    from tests.webhook_receiver import Receiver as Later

    with socket.socket() as probe:  # a port nothing listens on yet: attempts fail at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hook = register(api, f"http://127.0.0.1:{port}/later", ["job.finished"])
    submit(api, "long_task", {"n": 1})
    pending = wait_until(
        lambda: next((d for d in deliveries(api, hook["id"]) if d["attempts"] >= 2), None),
        timeout=20,
        message="two failed attempts",
    )
    assert pending["status"] == "pending" and "could not connect" in pending["attempt_log"][0]["error"]
    senders.kill()
    with Later(port=port) as later:
        time.sleep(2)
        assert later.requests() == []  # nobody sends while no sender runs
        senders.start()
        wait_until(lambda: later.requests("/later"), timeout=20, message="the delivery after the restart")
        assert later.requests("/later")[0].headers["webhook-id"] == pending["id"]
        assert verify(
            hook["secret"], later.requests()[0].headers, later.requests()[0].body, now=int(time.time())
        )
    wait_delivery(api, hook["id"], "delivered")


def test_old_deliveries_are_pruned_with_their_attempts(
    api: TestClient, worker: Any, receiver: Receiver
) -> None:
    from datetime import timedelta

    from sqlmodel import select, update

    from jobs.clock import utcnow
    from jobs.history.db import session_scope
    from jobs.history.models import WebhookAttempt, WebhookDelivery
    from jobs.webhooks.sender import prune_deliveries

    where = path()
    hook = register(api, receiver.url + where, ["job.finished"])
    submit(api, "long_task", {"n": 1})
    delivered = wait_delivery(api, hook["id"], "delivered")
    with session_scope() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivered["id"])
            .values(created_at=utcnow() - timedelta(days=100))
        )
    assert prune_deliveries(older_than=timedelta(days=90)) >= 1
    assert deliveries(api, hook["id"]) == []
    with session_scope() as session:
        left = session.exec(select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivered["id"])).all()
        assert left == []


def test_a_canceled_job_is_delivered_from_the_apis_own_write(api: TestClient, receiver: Receiver) -> None:
    """A waiting job's cancel is written through by the API process: its outbox row comes from there."""
    where = path()
    hook = register(api, receiver.url + where, ["job.canceled"])
    job = submit(api, "long_task", {"n": 1}, delay=3600)
    assert api.post(f"/api/v1/jobs/{job['job_id']}/cancel").status_code == 200
    wait_until(lambda: receiver.requests(where), timeout=20, message="the job.canceled delivery")
    body = json.loads(receiver.requests(where)[0].body)
    assert body["type"] == "job.canceled" and body["data"]["job_id"] == job["job_id"]
    assert deliveries(api, hook["id"])[0]["event"] == "job.canceled"


def test_the_readmes_receiver_verifies_a_signed_delivery() -> None:
    """The README's few lines of Python accept what the sender signs, and refuse a changed body."""
    import re

    from jobs.webhooks.signing import headers_for, new_secret
    from tests.conftest import ROOT

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Webhooks") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    scope: dict[str, Any] = {}
    exec(code.group(1), scope)
    secret, body = new_secret(), b'{"type":"job.finished","data":{}}'
    headers = headers_for(secret, "msg_abc", int(time.time()), body)
    assert scope["verify"](secret, headers, body) is True
    assert scope["verify"](secret, headers, body + b"x") is False
    assert scope["verify"](new_secret(), headers, body) is False
    stale = headers_for(secret, "msg_abc", int(time.time()) - 3600, body)
    assert scope["verify"](secret, stale, body) is False
