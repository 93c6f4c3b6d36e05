"""A task's submit form, generated from its payload's JSON Schema, and the form's values read back.

Each top-level property becomes one field: integers and numbers are number
inputs with the schema's bounds, booleans checkboxes, enums selects, strings
text inputs (a textarea past 200 characters), and anything else (objects,
arrays, nested models) a JSON textarea. A model with no declared properties
(one that takes any JSON object) gets a single JSON textarea for the whole
payload. The form only converts text to JSON types; validation stays with
the task's model (`jobs.actions.submit.submit_job`), whose field errors are shown
next to the fields they name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from jobs.settings import get_settings
from jobs.storable import nesting_exceeds

WHOLE_PAYLOAD = "__payload__"
LONG_TEXT = 200


@dataclass
class FormField:
    name: str
    label: str
    kind: str  # integer, number, boolean, enum, string, text, json
    required: bool
    description: str = ""
    default: Any = None
    has_default: bool = False
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    options: list[Any] = field(default_factory=list)
    value: str = ""
    checked: bool = False
    error: str | None = None

    @property
    def input_id(self) -> str:
        return f"field-{self.name}"

    @property
    def step(self) -> str:
        return "1" if self.kind == "integer" else "any"

    @property
    def hint(self) -> str:
        """Bounds and default in words, shown under the field."""
        parts = []
        if self.minimum is not None and self.maximum is not None:
            parts.append(f"{_number(self.minimum)} to {_number(self.maximum)}")
        elif self.minimum is not None:
            parts.append(f"at least {_number(self.minimum)}")
        elif self.maximum is not None:
            parts.append(f"at most {_number(self.maximum)}")
        if self.max_length is not None:
            parts.append(f"up to {self.max_length} characters")
        if self.has_default and self.kind not in ("boolean",):
            parts.append(f"default {json.dumps(self.default)}")
        return "; ".join(parts)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow one `$ref` (or a single-item `allOf` around one) into `$defs`."""
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = schema.get("$defs", {}).get(ref.split("/")[-1], {})
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _field(schema: dict[str, Any], name: str, node: dict[str, Any], required: bool) -> FormField:
    node = _resolve(schema, node)
    nullable = False
    options = node.get("anyOf")
    if isinstance(options, list):
        kinds = [_resolve(schema, o) for o in options]
        concrete = [o for o in kinds if o.get("type") != "null"]
        nullable = len(concrete) < len(kinds)
        if len(concrete) == 1:
            node = {**concrete[0], **{k: v for k, v in node.items() if k != "anyOf"}}
    kind = "json"
    if "enum" in node:
        kind = "enum"
    elif node.get("type") in ("integer", "number", "boolean"):
        kind = node["type"]
    elif node.get("type") == "string":
        kind = "text" if (node.get("maxLength") or 0) > LONG_TEXT else "string"
    form_field = FormField(
        name=name,
        label=node.get("title") or name.replace("_", " ").capitalize(),
        kind=kind,
        required=required,
        description=node.get("description", ""),
        default=node.get("default"),
        has_default="default" in node,
        nullable=nullable,
        minimum=node.get("minimum", node.get("exclusiveMinimum")),
        maximum=node.get("maximum", node.get("exclusiveMaximum")),
        min_length=node.get("minLength"),
        max_length=node.get("maxLength"),
        pattern=node.get("pattern"),
        options=list(node.get("enum", [])),
    )
    if form_field.has_default:
        form_field.value = _as_text(form_field, form_field.default)
        form_field.checked = form_field.default is True
    return form_field


def _as_text(form_field: FormField, value: Any) -> str:
    if value is None:
        return ""
    if form_field.kind == "json":
        return json.dumps(value, indent=2)
    if form_field.kind == "enum":
        return str(form_field.options.index(value)) if value in form_field.options else ""
    return str(value)


def fields_for(schema: dict[str, Any]) -> list[FormField]:
    """The form's fields for a payload schema (one JSON field when it declares no properties)."""
    properties = schema.get("properties") or {}
    if not properties:
        return [
            FormField(
                name=WHOLE_PAYLOAD,
                label="Payload (a JSON object)",
                kind="json",
                required=False,
                description=schema.get("description", ""),
                value="{}",
            )
        ]
    required = set(schema.get("required") or [])
    return [_field(schema, name, node, name in required) for name, node in properties.items()]


def read_form(fields: list[FormField], form: dict[str, str]) -> dict[str, Any]:
    """The payload the submitted text stands for; conversion errors are set on the fields.

    An empty optional field is left out, so the model's default applies.
    """
    payload: dict[str, Any] = {}
    for form_field in fields:
        raw = form.get(form_field.name, "")
        form_field.value = raw
        if form_field.kind == "boolean":
            form_field.checked = raw in ("on", "true", "1")
            payload[form_field.name] = form_field.checked
            continue
        text = raw if form_field.kind in ("string", "text") else raw.strip()
        if text == "":
            if form_field.required:
                form_field.error = "This field is required."
            continue
        try:
            value = _convert(form_field, text)
        except ValueError as exc:
            form_field.error = str(exc)
            continue
        if form_field.name == WHOLE_PAYLOAD:
            if not isinstance(value, dict):
                form_field.error = 'Enter a JSON object, like {"key": "value"}.'
                continue
            payload.update(value)
        else:
            payload[form_field.name] = value
    return payload


def _convert(form_field: FormField, text: str) -> Any:
    if form_field.kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError("Enter a whole number.") from None
    if form_field.kind == "number":
        try:
            number = float(text)
        except ValueError:
            raise ValueError("Enter a number.") from None
        if not math.isfinite(number):
            raise ValueError("Enter a finite number.")
        return number
    if form_field.kind == "enum":
        try:
            return form_field.options[int(text)]
        except (ValueError, IndexError):
            raise ValueError("Choose one of the options.") from None
    if form_field.kind == "json":
        limit = get_settings().max_json_depth
        if nesting_exceeds(text, limit):
            raise ValueError(f"Nest at most {limit} levels of arrays and objects (CONVEYOR_MAX_JSON_DEPTH).")
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"Enter valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})."
            ) from None
    return text


def attach_errors(fields: list[FormField], errors: list[dict[str, Any]]) -> list[str]:
    """Put the model's field errors (`loc`, `msg`) on their fields; returns those that name none."""
    by_name = {f.name: f for f in fields}
    whole = by_name.get(WHOLE_PAYLOAD)
    rest = []
    for error in errors:
        loc = [str(part) for part in error.get("loc") or []]
        message = str(error.get("msg", "Invalid value."))
        target = by_name.get(loc[0]) if loc else None
        if target is None and whole is not None:
            target = whole
            message = f"{'.'.join(loc)}: {message}" if loc else message
        if target is None:
            rest.append(f"{'.'.join(loc)}: {message}" if loc else message)
            continue
        detail = f"{'.'.join(loc[1:])}: {message}" if len(loc) > 1 and target is not whole else message
        target.error = f"{target.error} {detail}" if target.error else detail
    return rest
