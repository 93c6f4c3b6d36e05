"""Redaction, error signatures, trace ids and durations: the pure functions behind history."""

from __future__ import annotations

from jobs.redaction import REDACTED, redact


def test_redacts_nested_secret_keys():
    data = {
        "user": "ann",
        "Password": "x",
        "headers": {"Authorization": "Bearer y", "X-Request": 1},
        "items": [{"api_key": "k"}, {"ok": True}],
        "db_token_value": "t",
    }
    assert redact(data, ["password", "authorization", "apikey", "token"]) == {
        "user": "ann",
        "Password": REDACTED,
        "headers": {"Authorization": REDACTED, "X-Request": 1},
        "items": [{"api_key": REDACTED}, {"ok": True}],
        "db_token_value": REDACTED,
    }


def test_leaves_scalars_and_the_input_untouched():
    data = {"secret": "s"}
    assert redact(data, ["secret"]) == {"secret": REDACTED}
    assert data == {"secret": "s"}
    assert redact(5, ["secret"]) == 5


def test_redact_text_covers_the_usual_shapes():
    from jobs.redaction import redact_text

    markers = ["password", "token", "secret", "apikey", "authorization", "privatekey"]
    cases = {
        "connect failed: password=hunter2 host=db": "connect failed: password=[REDACTED] host=db",
        '{"api_key": "sk-1", "user": "ann"}': '{"api_key": "[REDACTED]", "user": "ann"}',
        "{'db_password': 'a b c', 'n': 1}": "{'db_password': '[REDACTED]', 'n': 1}",
        "GET /x?token=abc123&page=2": "GET /x?token=[REDACTED]&page=2",
        "Authorization: Bearer eyJhbGciOi.x.y": "Authorization: [REDACTED]",
        "sent Bearer abcdefghijkl to upstream": "sent Bearer [REDACTED] to upstream",
        "postgresql://app:s3cr3t@db:5432/prod": "postgresql://app:[REDACTED]@db:5432/prod",
        "X-Auth-Token: abc": "X-Auth-Token: [REDACTED]",
        "private key: MIIEv": "private key: [REDACTED]",
        "tokens processed 5, n=3": "tokens processed 5, n=3",
        "nothing to hide": "nothing to hide",
    }
    for text, expected in cases.items():
        assert redact_text(text, markers) == expected, text


def test_error_signatures_fold_variable_parts():
    from jobs.error_signature import error_signature

    assert error_signature(
        "KeyError", "user 4211 not in 'eu-west-1' (req 9f1c3a2b-1111-4222-8333-123456789abc)"
    ) == ("KeyError: user <n> not in '<s>' (req <id>)")
    assert error_signature("E", 'object at 0x7f3a2b1c; sha deadbeef12; key "k"') == (
        'E: object at <hex>; sha <hex>; key "<s>"'
    )
    assert (
        error_signature("E", "db-3:5432 at 2026-11-23T10:00:00Z for a@b.com")
        == "E: db-<n>:<n> at <time> for <email>"
    )
    assert error_signature("E", "first line 1\nsecond line") == "E: first line <n>"
    assert error_signature("E", "") == "E"
    assert error_signature(None, "x") is None
    assert len(error_signature("E", "x" * 1000) or "") == 255


def test_trace_ids_from_headers():
    from jobs.tracing import trace_id_from_headers

    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_from_headers(f"00-{trace}-00f067aa0ba902b7-01") == trace
    assert trace_id_from_headers("00-" + "0" * 32 + "-00f067aa0ba902b7-01", "fallback") == "fallback"
    assert trace_id_from_headers("garbage", "req-1") == "req-1"
    made = trace_id_from_headers(None, "has spaces in it")
    assert len(made) == 32 and made != trace_id_from_headers()


def test_durations():
    from datetime import timedelta

    import pytest

    from jobs.clock import parse_duration

    assert parse_duration("90d") == timedelta(days=90)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration(" 1.5m ") == timedelta(seconds=90)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("45") == timedelta(seconds=45)
    for bad in ("", "soon", "5y", "-3d"):
        with pytest.raises(ValueError):
            parse_duration(bad)
