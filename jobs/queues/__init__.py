"""Queueing and recovery on RQ: enqueueing and RQ's records (`queueing`), the worker's claim and
finish scripts (`rq_engine`), RQ's private calls in one place (`rq_private`), retries,
schedules, the reconciler, the loss sweep (`requeue`), queue pause and drain, and the
maintenance loop that runs the periodic work.
"""
