"""Redaction, error signatures, trace ids and durations: the pure functions behind history."""

from __future__ import annotations

from jobs.access.redaction import REDACTED, redact


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
    from jobs.access.redaction import redact_text

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
    from jobs.reporting.error_signature import error_signature

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


def _defaults() -> list[str]:
    from jobs.settings import Settings

    return list(Settings.model_fields["redact_keys"].default)


def test_the_widened_key_list_matches_whole_words_in_any_spelling():
    from jobs.access.redaction import is_secret_key

    markers = _defaults()
    secret = [
        "pwd", "db_pass", "PASS", "auth", "x_auth", "auth_token", "X-Auth-Token", "authToken", "jwt",
        "bearer", "signing_key", "signingKey", "private_key", "privateKeyPem", "client_secret",
        "Client-Secret", "clientSecret", "CLIENT_SECRET", "dsn", "SENTRY_DSN", "cookie", "Set-Cookie",
        "session", "session_id", "sessionId", "APIKey", "x-api-key", "credentials", "aws_secret_access_key",
        "passphrase", "refresh_token", "db.password",
    ]  # fmt: skip
    ordinary = [
        "passenger", "author", "Authors", "compass", "bypass", "tokens", "total_tokens", "max_tokens",
        "session_count", "password_length", "token_type", "auth_method", "cookie_name", "dsname",
        "passage", "user", "description", "jwtless", "sessions_total",
    ]  # fmt: skip
    assert [k for k in secret if not is_secret_key(k, markers)] == []
    assert [k for k in ordinary if is_secret_key(k, markers)] == []


def test_free_text_secrets_are_redacted_by_shape_and_by_key():
    from jobs.access.redaction import redact_text

    markers = _defaults()
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    cases = {
        "password=hunter2": "password=[REDACTED]",
        "pwd: hunter2, user: ann": "pwd: [REDACTED], user: ann",
        "Client-Secret = s3cr3t": "Client-Secret = [REDACTED]",
        "clientSecret=abc&x=1": "clientSecret=[REDACTED]&x=1",
        "--password=hunter2 --user ann": "--password=[REDACTED] --user ann",
        '{"message": "ok", "jwt": "abc.def"}': '{"message": "ok", "jwt": "[REDACTED]"}',
        "Cookie: sid=abc123": "Cookie: [REDACTED]",
        "SENTRY_DSN=https://k@o1.ingest.io/5": "SENTRY_DSN=[REDACTED]",
        "Authorization: Basic dXNlcjpwYXNz": "Authorization: [REDACTED]",
        "calling with Bearer abc.def-ghi_jkl": "calling with Bearer [REDACTED]",
        f"token {jwt} expired": "token [REDACTED] expired",
        "key AKIAIOSFODNN7EXAMPLE used": "key [REDACTED] used",
        "ASIAY34FZKBOKMUTVV7A": "[REDACTED]",
        "ghp_" + "a" * 36: "[REDACTED]",
        "gho_" + "B1" * 18 + " and ghs_" + "c" * 36: "[REDACTED] and [REDACTED]",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz": "[REDACTED]",
        "glpat-abcdefghij0123456789": "[REDACTED]",
        "slack xoxb-123456789012-abcdefghij": "slack [REDACTED]",
        "redis://default:pa55@cache:6379/0": "redis://default:[REDACTED]@cache:6379/0",
        "the password: hunter2": "the password: [REDACTED]",
        "auth: letmein": "auth: [REDACTED]",
        "password=[REDACTED]": "password=[REDACTED]",
    }
    for text, expected in cases.items():
        assert redact_text(text, markers) == expected, text


def test_ordinary_text_is_left_alone():
    from jobs.access.redaction import redact_text

    markers = _defaults()
    ordinary = [
        "author: Ann Lee, passenger: Bob",
        "session_count=5 total_tokens=1200 max_tokens: 256 token_type=bearer-ish",
        "Processed 12 files in 3.5s; ratio=0.75, status: ok",
        'Traceback (most recent call last):\n  File "/app/x.py", line 3, in run\nValueError: bad',
        "see https://example.com/docs?page=2#auth-section",
        "if token == expected: return",
        "time 12:30:45 at 2026-01-01T00:00:00Z",
        "the token file: /etc/app/token.txt",
        "eyJ alone is not a token; AKIA123 is too short; ghp_short",
        "résumé: déjà vu",
        "",
    ]
    for text in ordinary:
        assert redact_text(text, markers) == text, text


def test_redact_scans_strings_inside_json_data():
    data = {"message": "password=hunter2", "items": ["Bearer abcdefghijkl", 5], "note": "fine"}
    assert redact(data, _defaults()) == {
        "message": "password=[REDACTED]",
        "items": ["Bearer [REDACTED]", 5],
        "note": "fine",
    }


def test_redaction_stays_fast_on_long_text():
    import time

    from jobs.access.redaction import redact_text

    markers = _defaults()
    for text in ("x" * 1_000_000, "-".join(["abcdefgh"] * 50_000), "a.b-c_d " * 50_000, "https://" * 50_000):
        started = time.perf_counter()
        redact_text(text, markers)
        assert time.perf_counter() - started < 3, text[:20]


def test_a_payload_with_a_secret_redacted_inside_a_string_is_not_rerun_from_sql():
    """Requeueing from SQL's copy would run the job with `[REDACTED]` in place of the secret."""
    from jobs.queues.requeue import holds_redacted

    assert holds_redacted({"note": f"login with pwd={REDACTED}"})
    assert not holds_redacted({"note": "login", "n": [1, "x"]})
