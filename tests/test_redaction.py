"""Secret-looking keys are redacted at any depth; other data is left alone."""

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
