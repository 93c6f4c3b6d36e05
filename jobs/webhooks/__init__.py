"""Webhooks (issue 15): endpoints a tenant registers, and the deliveries that tell them about jobs.

- `signing`: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
- `destinations`: which URLs may be called (https in production, no private addresses).
- `registry`: the endpoints in SQL (create, list, delete) and the events they may ask for.
- `outbox`: deliveries written in the transaction that records a job's end (`jobs.history.store`),
  listed and re-sent by the API.
- `sender`: the loop in each worker's recorder process that sends what is due, with retries.
"""
