"""One snapshot shape: the server's declaration, the document every channel serves, the pages'
view and the Python client's own copy (which must not import the server) agree field for field."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from conveyor_client.snapshot import Snapshot
from jobs.snapshot import PUBLIC_FIELDS, JobSnapshot, assemble, encode, peek
from web.job_view import JobView, view_of

DOC_VALUES: dict[str, Any] = {
    "job_id": "0b7e6a52-2f43-4c1e-9d59-0a4a3f7f2c11",
    "task": "long_task",
    "queue": "default",
    "status": "finished",
    "progress": 100.0,
    "message": "done",
    "result": {"rows": 3},
    "result_ref": {"url": "/api/v1/jobs/x/result", "size_bytes": 20000, "sha256": "ab" * 32},
    "error": None,
    "attempt": 2,
    "max_retries": 3,
    "created_at": "2026-12-03T08:00:00.000000Z",
    "enqueued_at": "2026-12-03T08:00:00.100000Z",
    "started_at": "2026-12-03T08:00:01.000000Z",
    "ended_at": "2026-12-03T08:00:02.000000Z",
    "updated_at": "2026-12-03T08:00:02.000000Z",
    "eta_seconds": None,
    "seq": 7,
}


def test_the_declaration_is_the_document_order():
    assert PUBLIC_FIELDS[0] == "job_id" and PUBLIC_FIELDS[-1] == "seq"  # what peek() relies on
    before_status = PUBLIC_FIELDS[: PUBLIC_FIELDS.index("status")]
    assert all(JobSnapshot.model_fields[name].annotation is str for name in before_status)
    assert set(DOC_VALUES) == set(PUBLIC_FIELDS), "this test's document must list every field"


def test_the_client_copy_has_the_same_fields_in_the_same_order():
    client_fields = [f.name for f in dataclasses.fields(Snapshot) if f.name != "raw"]
    assert client_fields == list(PUBLIC_FIELDS)


def test_a_served_document_reads_the_same_in_the_server_model_the_client_and_the_page():
    doc = assemble({name: encode(value) for name, value in DOC_VALUES.items()})
    assert list(json.loads(doc)) == list(PUBLIC_FIELDS)
    head = peek(doc)
    assert head is not None and (head.job_id, head.status, head.seq) == (
        "0b7e6a52-2f43-4c1e-9d59-0a4a3f7f2c11",
        "finished",
        7,
    )

    server = JobSnapshot.model_validate_json(doc)
    client = Snapshot.from_json(json.loads(doc))
    page = view_of(doc, with_actions=False)
    assert isinstance(page, JobView)
    for name in PUBLIC_FIELDS:
        expected = server.model_dump(mode="json")[name]
        got = getattr(client, name)
        got = got.isoformat().replace("+00:00", "Z") if hasattr(got, "isoformat") else got
        assert _same(got, expected), (name, got, expected)
        shown = page.model_dump(mode="json")[name]
        assert _same(shown, expected), (name, shown, expected)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str) and a.endswith("Z") and b.endswith("Z"):
        from datetime import datetime

        return datetime.fromisoformat(a.replace("Z", "+00:00")) == datetime.fromisoformat(
            b.replace("Z", "+00:00")
        )
    return bool(a == b)
