"""Live state in Redis: the job hash and the one gate every status change goes through (`live`),
the reads every channel shares (`reads`), the lifecycle transitions and attempts built on the
gate, batches' live snapshots, job logs as they are written, large results stashed beside them,
and the Redis connections.
"""
