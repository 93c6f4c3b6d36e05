"""The submit form's generation from a payload schema, and reading the form back (no services needed)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field, ValidationError

from web.charts import nice_step, percentile_chart, throughput_chart
from web.payload_form import WHOLE_PAYLOAD, attach_errors, fields_for, read_form
from web.rendering import format_duration, safe_next


class Size(StrEnum):
    SMALL = "small"
    LARGE = "large"


class Address(BaseModel):
    city: str


class Payload(BaseModel):
    count: int = Field(ge=1, le=10, description="How many.")
    ratio: float = 0.5
    size: Size = Size.SMALL
    verbose: bool = False
    note: str | None = None
    essay: str = Field(default="", max_length=5000)
    tags: list[str] = []
    address: Address | None = None


def by_name(fields: list) -> dict:
    return {f.name: f for f in fields}


def test_each_property_becomes_a_field_of_its_kind():
    fields = by_name(fields_for(Payload.model_json_schema()))
    assert fields["count"].kind == "integer" and fields["count"].required
    assert (fields["count"].minimum, fields["count"].maximum) == (1, 10)
    assert fields["count"].description == "How many." and fields["count"].hint == "1 to 10"
    assert fields["ratio"].kind == "number" and fields["ratio"].value == "0.5"
    assert fields["size"].kind == "enum" and fields["size"].options == ["small", "large"]
    assert fields["size"].value == "0"
    assert fields["verbose"].kind == "boolean" and not fields["verbose"].checked
    assert fields["note"].kind == "string" and fields["note"].nullable
    assert fields["essay"].kind == "text"
    assert fields["tags"].kind == "json" and fields["address"].kind == "json"


def test_the_form_reads_back_as_the_payload_the_model_accepts():
    fields = fields_for(Payload.model_json_schema())
    payload = read_form(
        fields,
        {"count": " 3 ", "ratio": "", "size": "1", "verbose": "on", "note": "", "tags": '["a", "b"]'},
    )
    assert not any(f.error for f in fields)
    assert payload == {"count": 3, "size": "large", "verbose": True, "tags": ["a", "b"]}
    model = Payload.model_validate(payload)
    assert model.ratio == 0.5 and model.size is Size.LARGE and model.note is None


def test_conversion_errors_stay_on_their_fields():
    fields = by_name(fields_for(Payload.model_json_schema()))
    read_form(list(fields.values()), {"count": "", "ratio": "inf", "size": "7", "tags": "[oops"})
    assert fields["count"].error == "This field is required."
    assert fields["ratio"].error == "Enter a finite number."
    assert fields["size"].error == "Choose one of the options."
    assert fields["tags"].error is not None and fields["tags"].error.startswith("Enter valid JSON")


def test_model_errors_are_placed_by_their_location():
    fields = fields_for(Payload.model_json_schema())
    payload = read_form(fields, {"count": "99", "address": '{"town": "x"}'})
    try:
        Payload.model_validate(payload)
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
    rest = attach_errors(fields, [*errors, {"loc": [], "msg": "Something about the whole payload."}])
    named = by_name(fields)
    assert "less than or equal to 10" in (named["count"].error or "")
    assert (named["address"].error or "").startswith("city: Field required")
    assert rest == ["Something about the whole payload."]


def test_a_model_without_properties_takes_one_json_object():
    class Anything(BaseModel):
        model_config = {"extra": "allow"}

    fields = fields_for(Anything.model_json_schema())
    assert [f.name for f in fields] == [WHOLE_PAYLOAD]
    assert read_form(fields, {WHOLE_PAYLOAD: '{"a": 1}'}) == {"a": 1}
    read_form(fields, {WHOLE_PAYLOAD: "[1]"})
    assert fields[0].error and "JSON object" in fields[0].error


def test_durations_charts_and_redirect_targets():
    assert [format_duration(s) for s in (0.42, 12, 185, 3600, 7260, None)] == [
        "0.4 s",
        "12 s",
        "3 min 5 s",
        "1 h",
        "2 h 1 min",
        "—",
    ]
    assert [nice_step(v) for v in (0, 0.3, 3, 7, 12, 4500)] == [1, 0.5, 5, 10, 20, 5000]
    assert nice_step(0.3, whole=True) == 1
    days = [{"day": f"2026-11-{d:02d}", "finished": d % 3, "failed": 1, "canceled": 0} for d in range(1, 31)]
    chart = throughput_chart(days)
    assert len(chart.x_labels) <= 10 and all(bar.height > 0 for bar in chart.bars)
    assert max(bar.y for bar in chart.bars) <= chart.height
    empty = percentile_chart({"run": {"p50": None, "p95": None, "p99": None}})
    assert empty.bars == [] and empty.summary == "No data."
    assert [safe_next(t) for t in ("/queue", "//evil.example", "/\\evil", "https://x", None)] == [
        "/queue",
        "/jobs",
        "/jobs",
        "/jobs",
        "/jobs",
    ]
