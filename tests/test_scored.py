"""contract.scored: the one record, and everything that derives from it (HTTP schema and body, bulk columns, Arrow)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pyarrow
import pytest

from app.config import Settings
from contract import scored
from scoring.__main__ import parser
from scoring.io import output_columns
from tests.conftest import ServeFactory

POSITIVE = "A wonderful, moving film. I loved every minute of it!"
JSON_TYPES = {str: "string", float: "number", int: "integer", bool: "boolean"}
ARROW_TYPES = {str: pyarrow.string(), float: pyarrow.float64(), int: pyarrow.int64(), bool: pyarrow.bool_()}


def test_the_field_table_is_the_record() -> None:
    assert (
        scored.NAMES
        == tuple(f.name for f in dataclasses.fields(scored.Scored))
        == ("label", "score", "p_positive", "n_tokens", "truncated")
    )
    assert (*scored.NAMES, "error") == scored.COLUMNS
    record = scored.Scored.of(0.25, ("negative", "positive"), n_tokens=7, truncated=False)
    assert record == scored.Scored("negative", 0.75, 0.25, 7, False)
    assert scored.scored_row(record) == {
        "label": "negative",
        "score": 0.75,
        "p_positive": 0.25,
        "n_tokens": 7,
        "truncated": False,
        "error": None,
    }
    assert scored.error_row("why") == {**dict.fromkeys(scored.NAMES), "error": "why"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.label = "positive"  # type: ignore[misc]


def test_a_subclass_adds_its_own_fields_after_the_record() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithExplanation(scored.Scored):  # what app/runner.py's Prediction can be
        explanation: list[float] | None = None

    made = WithExplanation.of(0.75, ("neg", "pos"), 4, True, explanation=[0.5])
    assert isinstance(made, WithExplanation) and made.explanation == [0.5]
    assert made.as_dict() == {"label": "pos", "score": 0.75, "p_positive": 0.75, "n_tokens": 4, "truncated": True}


def test_arrow_fields_follow_the_python_types_and_are_nullable() -> None:
    fields = scored.arrow_fields()
    assert [f.name for f in fields] == list(scored.COLUMNS)
    assert [f.type for f in fields] == [ARROW_TYPES[f.python_type] for f in scored.ROW_FIELDS]
    assert all(f.nullable for f in fields)  # a bad row has no prediction
    rows = [scored.scored_row(scored.Scored.of(0.9, ("neg", "pos"), 3, True)), scored.error_row("missing text")]
    table = pyarrow.Table.from_pylist(rows, schema=pyarrow.schema(fields))
    assert table.to_pylist() == rows


def test_the_service_loads_the_record_without_pyarrow() -> None:
    code = "import sys; sys.modules['pyarrow'] = None; import app.schemas, contract.scored; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize(
    ("text", "max_chars", "error"),
    [
        ("fine", 10, None),
        ("", 10, scored.BLANK),
        (" \t\n\u3000", 10, scored.BLANK),
        ("x" * 10, 10, None),
        ("x" * 11, 10, "11 characters, at most 10 per text"),
        ("  ", 1, scored.BLANK),  # blank is named before too long
    ],
)
def test_the_text_rule(text: str, max_chars: int, error: str | None) -> None:
    assert scored.text_error(text, max_chars) == error


def test_service_and_bulk_scoring_share_the_max_text_chars_default() -> None:
    bulk = parser().parse_args(["in.csv", "--out", "out.csv"]).max_text_chars
    assert Settings.model_fields["max_text_chars"].default == bulk == scored.DEFAULT_MAX_TEXT_CHARS


def test_bulk_columns_are_the_record_and_error() -> None:
    assert output_columns(["id", "label", "text"]) == ["id", "text", *scored.COLUMNS]


@pytest.mark.anyio
async def test_the_predict_openapi_schema_and_body_are_the_record(serve: ServeFactory) -> None:
    async with serve() as (client, _):
        spec = (await client.get("/openapi.json")).json()
        answer = (await client.post("/predict", json={"texts": [POSITIVE, "Dull."]})).json()
    schemas = spec["components"]["schemas"]

    def resolve(node: dict) -> dict:
        return schemas[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node

    response = resolve(spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"])
    item = resolve(response["properties"]["predictions"]["items"])
    record = {f.name: JSON_TYPES[f.python_type] for f in scored.FIELDS}
    assert list(item["properties"]) == [*record, "explanation"]  # the record's fields, in order, then the service's extra
    assert {name: item["properties"][name]["type"] for name in record} == record
    assert set(item["required"]) == set(record)
    assert {name: item["properties"][name]["description"] for name in record} == {f.name: f.description for f in scored.FIELDS}
    for prediction in answer["predictions"]:  # the body as sent (the fast lane skips response validation)
        assert list(prediction) == [*record, "explanation"]
        assert {name: JSON_TYPES[type(prediction[name])] for name in record} == record


@pytest.mark.anyio
async def test_the_service_refuses_with_the_rule_s_words_and_default_limit(serve: ServeFactory) -> None:
    too_long = "a" * (scored.DEFAULT_MAX_TEXT_CHARS + 1)
    async with serve() as (client, _):
        blank = await client.post("/predict", json={"texts": ["ok", " \t"]})
        long = await client.post("/predict", json={"text": too_long})
        at_limit = await client.post("/predict", json={"text": too_long[1:]})
    assert (blank.status_code, blank.json()["error"]["message"]) == (422, f"texts.1: {scored.BLANK}")
    assert (long.status_code, long.json()["error"]["message"]) == (
        422,
        f"text: {scored.DEFAULT_MAX_TEXT_CHARS + 1} characters, at most {scored.DEFAULT_MAX_TEXT_CHARS} per text",
    )
    assert at_limit.status_code == 200
