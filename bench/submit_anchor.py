"""The anchor of the submit benchmark: a bare FastAPI app whose POST does one SQL INSERT and one
RQ `enqueue`, on the databases Conveyor uses in the same run (DATABASE_URL, REDIS_URL).

    uvicorn bench.submit_anchor:app

It is what a team writes in an afternoon: a sync route, SQLAlchemy Core, RQ's own `enqueue`
(its default serializer), no authentication, validation beyond the body's model, live
state or history. Its pool keeps 20 connections like Conveyor's, so that neither side pays
for opening connections at concurrency 20.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from pydantic import BaseModel, Field
from redis import Redis
from rq import Queue

from jobs.settings import sqlalchemy_url

metadata = sa.MetaData()
anchor_jobs = sa.Table(
    "anchor_jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("task", sa.String(100), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

engine = sa.create_engine(sqlalchemy_url(os.environ["DATABASE_URL"]), pool_size=20, max_overflow=20)
metadata.create_all(engine)
queue = Queue("anchor", connection=Redis.from_url(os.environ["REDIS_URL"]))

app = FastAPI()


class Submit(BaseModel):
    task: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict)


def noop(**payload: Any) -> None:
    """What the anchor's jobs would run (nothing runs them in the benchmark)."""


@app.post("/jobs", status_code=201)
def submit(body: Submit) -> dict[str, str]:
    job_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            anchor_jobs.insert().values(
                id=job_id, task=body.task, payload=body.payload, created_at=datetime.now(UTC)
            )
        )
    queue.enqueue("bench.submit_anchor.noop", kwargs=body.payload, job_id=job_id)
    return {"job_id": job_id, "status": "queued"}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
