"""Sending what the outbox holds: a thread in each worker's recorder process (`jobs.queues.maintenance`).

Every sender looks for due deliveries, takes one per endpoint at a time (a lease in SQL, so a
sender that dies mid-send leaves it to be sent again once the lease runs out: at least once, with
the same `webhook-id`), and posts it from a small thread pool. An endpoint holds at most
``webhook_per_endpoint`` deliveries in flight across all senders (slots in Redis), and each attempt
is bounded by ``webhook_timeout``, so a slow or dead endpoint delays only its own deliveries.
Failures are retried with exponential backoff and jitter until the delivery's ``give_up_at``; then
it is failed. Every attempt is a row in `webhook_attempts`.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import sqlalchemy as sa
from redis import Redis
from sqlmodel import col, select

from jobs.access.redaction import redact_text
from jobs.clock import utcnow
from jobs.history.db import session_scope
from jobs.history.models import Webhook, WebhookAttempt, WebhookDelivery
from jobs.settings import Settings, get_settings
from jobs.webhooks.destinations import Destination, RefusedDestination, check_destination
from jobs.webhooks.outbox import DELIVERED, FAILED, PENDING
from jobs.webhooks.signing import headers_for

log = logging.getLogger(__name__)

MAX_EXCERPT = 4096  # bytes of an answer that are read (and kept); the rest is never read
JITTER = 0.2
PRUNE_EVERY = 3600.0  # seconds between deletions of deliveries past retention
SLOT_KEY = "cv:webhooks:slot:{webhook_id}:{index}"
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: a status code (None when no answer came) and why it failed."""

    status_code: int | None
    error: str | None
    excerpt: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


def retry_delay(attempts: int, settings: Settings) -> float:
    """Seconds before the next try after ``attempts`` failures: doubling, capped, with ±20% jitter."""
    base = min(settings.webhook_retry_max_delay, settings.webhook_retry_base * 2 ** max(0, attempts - 1))
    return base * random.uniform(1 - JITTER, 1 + JITTER)


def _target(destination: Destination, address: object) -> str:
    host = f"[{address}]" if ":" in str(address) else str(address)
    parts = destination.url
    path = parts.path or "/"
    return f"{parts.scheme}://{host}:{destination.port}{path}" + (f"?{parts.query}" if parts.query else "")


def post(
    http: httpx.Client, url: str, *, secret: str, msg_id: str, body: bytes, settings: Settings
) -> Outcome:
    """One attempt: check the destination again, connect to an address just checked, read at most
    ``MAX_EXCERPT`` bytes of the answer, follow no redirect."""
    start = time.monotonic()

    def done(code: int | None, error: str | None, excerpt: bytes = b"") -> Outcome:
        text = redact_text(excerpt.decode(errors="replace")) if excerpt else None
        return Outcome(code, error, text, round((time.monotonic() - start) * 1000))

    try:
        destination = check_destination(url, settings)
    except RefusedDestination as exc:
        return done(None, f"refused: {exc.message}")
    headers = headers_for(secret, msg_id, int(time.time()), body)
    default_port = 443 if destination.url.scheme == "https" else 80
    headers["host"] = destination.host + ("" if destination.port == default_port else f":{destination.port}")
    extensions = {"sni_hostname": destination.host} if destination.url.scheme == "https" else {}
    deadline = start + settings.webhook_timeout
    error = "no address"
    for address in destination.addresses[:3]:
        try:
            with http.stream(
                "POST", _target(destination, address), content=body, headers=headers, extensions=extensions
            ) as response:
                excerpt = b""
                for chunk in response.iter_raw():
                    excerpt += chunk
                    if len(excerpt) >= MAX_EXCERPT or time.monotonic() > deadline:
                        break
                code = response.status_code
            if 300 <= code < 400:
                return done(code, f"answered {code}: redirects are not followed", excerpt[:MAX_EXCERPT])
            if not 200 <= code < 300:
                return done(code, f"answered {code}", excerpt[:MAX_EXCERPT])
            return done(code, None, excerpt[:MAX_EXCERPT])
        except httpx.ConnectError as exc:
            error = f"could not connect: {exc}"
            continue
        except httpx.TimeoutException as exc:
            return done(None, f"timed out after {settings.webhook_timeout:g} s ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            return done(None, f"{type(exc).__name__}: {exc}")
    return done(None, error)


def prune_deliveries(*, older_than: timedelta, batch: int = 1000) -> int:
    """Delete deliveries (with their attempts) made before ``older_than`` ago; returns how many."""
    cutoff = utcnow() - older_than
    total = 0
    while True:
        with session_scope() as session:
            ids = list(
                session.exec(
                    select(WebhookDelivery.id).where(col(WebhookDelivery.created_at) < cutoff).limit(batch)
                ).all()
            )
            if not ids:
                return total
            session.execute(sa.delete(WebhookAttempt).where(col(WebhookAttempt.delivery_id).in_(ids)))
            session.execute(sa.delete(WebhookDelivery).where(col(WebhookDelivery.id).in_(ids)))
        total += len(ids)


class WebhookSender:
    """One process's sender: call :meth:`run` in a thread of its own."""

    def __init__(self, client: Redis, *, name: str) -> None:
        self.settings = get_settings()
        self.client = client
        self.name = name
        self.threads = self.settings.webhook_senders
        self.lease = timedelta(seconds=self.settings.webhook_timeout * 2 + 30)
        self._lock = threading.Lock()
        self._busy: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.threads), thread_name_prefix="webhook")
        timeout = httpx.Timeout(
            self.settings.webhook_timeout, connect=min(5.0, self.settings.webhook_timeout)
        )
        # No keep-alive: connections go to checked addresses, and one kept for a name must not
        # carry another name's request. No proxies from the environment: they would bypass the check.
        self.http = httpx.Client(
            follow_redirects=False,
            timeout=timeout,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._release = client.register_script(_RELEASE)

    def run(self, stop: threading.Event) -> None:
        """Send due deliveries until ``stop`` is set; what is in flight then finishes or is leased out.

        About hourly, deliveries past `CONVEYOR_RETENTION_DAYS` are deleted (as jobs are)."""
        next_prune = time.monotonic() + random.uniform(60, PRUNE_EVERY)
        try:
            while not stop.is_set():
                try:
                    self.tick()
                    if time.monotonic() >= next_prune:
                        next_prune = time.monotonic() + PRUNE_EVERY
                        prune_deliveries(older_than=timedelta(days=self.settings.retention_days))
                except Exception:
                    log.exception("webhooks: a sending pass failed")
                stop.wait(self.settings.webhook_poll_interval)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self.http.close()

    def _in_flight(self) -> int:
        with self._lock:
            return sum(self._busy.values())

    def tick(self) -> int:
        """Start sending what is due, one delivery per endpoint with room; returns how many started."""
        free = self.threads - self._in_flight()
        if free <= 0:
            return 0
        now = utcnow()
        due_by_endpoint = (
            select(WebhookDelivery.webhook_id, sa.func.min(WebhookDelivery.next_attempt_at))
            .where(WebhookDelivery.status == PENDING, col(WebhookDelivery.next_attempt_at) <= now)
            .group_by(col(WebhookDelivery.webhook_id))
            .order_by(sa.func.min(WebhookDelivery.next_attempt_at))
            .limit(500)
        )
        started = 0
        with session_scope() as session:
            endpoints = [hook_id for hook_id, _ in session.exec(due_by_endpoint).all()]
        for webhook_id in endpoints:
            if started >= free:
                break
            with self._lock:
                if self._busy.get(webhook_id, 0) >= self.settings.webhook_per_endpoint:
                    continue
            slot = self._take_slot(webhook_id)
            if slot is None:
                continue
            delivery_id = self._claim(webhook_id, now)
            if delivery_id is None:
                self._release(keys=[slot[0]], args=[slot[1]])
                continue
            with self._lock:
                self._busy[webhook_id] = self._busy.get(webhook_id, 0) + 1
            self._pool.submit(self._send, delivery_id, webhook_id, slot)
            started += 1
        return started

    def _take_slot(self, webhook_id: str) -> tuple[str, str] | None:
        token = f"{self.name}:{secrets.token_hex(4)}"
        for index in range(self.settings.webhook_per_endpoint):
            key = SLOT_KEY.format(webhook_id=webhook_id, index=index)
            if self.client.set(key, token, nx=True, px=int(self.lease.total_seconds() * 1000)):
                return key, token
        return None

    def _claim(self, webhook_id: str, now: datetime) -> str | None:
        """Lease the endpoint's earliest due delivery to this sender; None if another took it."""
        with session_scope() as session:
            candidate = session.exec(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.webhook_id == webhook_id,
                    WebhookDelivery.status == PENDING,
                    col(WebhookDelivery.next_attempt_at) <= now,
                )
                .order_by(col(WebhookDelivery.next_attempt_at))
                .limit(1)
            ).first()
            if candidate is None:
                return None
            taken = session.connection().execute(
                sa.update(WebhookDelivery)
                .where(
                    col(WebhookDelivery.id) == candidate,
                    col(WebhookDelivery.status) == PENDING,
                    col(WebhookDelivery.next_attempt_at) <= now,
                )
                .values(next_attempt_at=now + self.lease)
            )
            session.commit()
            return candidate if taken.rowcount == 1 else None

    def _send(self, delivery_id: str, webhook_id: str, slot: tuple[str, str]) -> None:
        try:
            with session_scope() as session:
                delivery = session.get(WebhookDelivery, delivery_id)
                hook = session.get(Webhook, webhook_id)
                if delivery is None or hook is None:
                    return
                url, secret, body = hook.url, hook.secret, delivery.body.encode()
            outcome = post(
                self.http, url, secret=secret, msg_id=delivery_id, body=body, settings=self.settings
            )
            self._record(delivery_id, outcome)
        except Exception:
            log.exception("webhooks: sending %s failed; it is sent again when its lease ends", delivery_id)
        finally:
            self._release(keys=[slot[0]], args=[slot[1]])
            with self._lock:
                self._busy[webhook_id] -= 1
                if not self._busy[webhook_id]:
                    del self._busy[webhook_id]

    def _record(self, delivery_id: str, outcome: Outcome) -> None:
        now = utcnow()
        with session_scope() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            if delivery is None:
                return
            delivery.attempts += 1
            session.add(
                WebhookAttempt(
                    delivery_id=delivery_id,
                    attempt=delivery.attempts,
                    started_at=now - timedelta(milliseconds=outcome.duration_ms),
                    duration_ms=outcome.duration_ms,
                    status_code=outcome.status_code,
                    error=outcome.error,
                    response_excerpt=outcome.excerpt,
                )
            )
            delivery.last_attempt_at = now
            delivery.last_status_code = outcome.status_code
            delivery.last_error = outcome.error
            if outcome.ok:
                delivery.status, delivery.delivered_at, delivery.next_attempt_at = DELIVERED, now, None
            else:
                retry_at = now + timedelta(seconds=retry_delay(delivery.attempts, self.settings))
                if retry_at > delivery.give_up_at:
                    delivery.status, delivery.next_attempt_at = FAILED, None
                else:
                    delivery.status, delivery.next_attempt_at = PENDING, retry_at
            session.add(delivery)
            session.commit()
