"""``server.validation.BodySchema``: jsonschema_rs decides, python-jsonschema explains.

Attacked here: the two validators agree on every request schema the server publishes,
over generated bodies built to sit on each keyword's edges (lengths around minLength and
maxLength, integers around minimum and maximum, arrays around maxItems, unknown keys,
wrong types, NaN, huge integers, lone surrogates); a refusal keeps python-jsonschema's
text (the field and the reason); and a body the fast validator alone refuses is still
refused. Real validators on the real schemas, no stand-ins.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from cyphrs_cli.server import spec
from cyphrs_cli.server.validation import BodySchema, _not_text

REQUEST_SCHEMAS = sorted({op.request for op in spec.OPERATIONS if op.request})


def _value(prop: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values for one property: mostly on the edges of its own keywords, sometimes any
    JSON value at all."""
    anything = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=5,
    )
    kind = prop.get("type")
    if kind == "string":
        low, high = prop.get("minLength", 0), prop.get("maxLength", 64)
        sizes = st.sampled_from(sorted({0, low, max(low - 1, 0), high - 1, high, high + 1}))
        alphabet = st.sampled_from(["a", "é", "\U0001f600", "\ud800", "\x00"])
        edge = st.builds(lambda a, b, n: a * (n - 1) + b if n else "", alphabet, alphabet, sizes)
        if "enum" in prop:
            edge = edge | st.sampled_from(prop["enum"])
        return edge | anything
    if kind == "integer":
        low, high = prop.get("minimum", -(2**63)), prop.get("maximum", 2**63)
        edges = [low - 1, low, high, high + 1, 2**70, float(low), float(high) + 0.5]
        return st.sampled_from(edges) | st.integers() | st.just(math.nan) | anything
    if kind == "array":
        item = _value(prop.get("items", {}))
        top = prop.get("maxItems", 8)
        sizes = st.sampled_from(sorted({0, 1, top, top + 1}))
        return sizes.flatmap(lambda n: st.lists(item, min_size=n, max_size=n)) | anything
    if "enum" in prop:
        return st.sampled_from(prop["enum"]) | anything
    return anything


def _bodies(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    props: dict[str, Any] = schema.get("properties", {})
    known = st.fixed_dictionaries({}, optional={k: _value(v) for k, v in props.items()})
    extra = st.dictionaries(st.sampled_from(["extra", "Csr", ""]), st.integers(), max_size=1)
    objects = st.builds(lambda a, b: {**a, **b}, known, extra)
    return objects | st.none() | st.lists(st.integers(), max_size=2) | st.text(max_size=3)


COMPILED = {name: BodySchema.compile(spec.SCHEMAS[name]) for name in REQUEST_SCHEMAS}


@pytest.mark.parametrize("name", REQUEST_SCHEMAS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_fast_validator_agrees_with_python_jsonschema(name: str, data: st.DataObject) -> None:
    body = data.draw(_bodies(spec.SCHEMAS[name]))
    checked = COMPILED[name]
    text = _not_text(body) is None  # no lone surrogate (refused as not text, below)
    assert (checked.refusal(body) is None) == (checked.full.is_valid(body) and text), body
    assert checked.fast.is_valid(body) == checked.full.is_valid(body), body


def test_a_refusal_names_the_field_and_the_reason_as_python_jsonschema_does() -> None:
    checked = BodySchema.compile(spec.SCHEMAS["EnrollRequest"])
    assert checked.refusal({"csr": "x" * 10}) is None
    assert checked.refusal({"csr": ""}) == "invalid request (csr): '' should be non-empty"
    refusal = checked.refusal({"csr": "x", "permissions": ["a"] * 65})
    assert refusal is not None and refusal.startswith("invalid request (permissions): ")
    assert checked.refusal([]) == "invalid request (body): [] is not of type 'object'"


def test_a_body_only_the_fast_validator_refuses_is_refused() -> None:
    """Were the two ever to disagree that way, the request is refused (the safe side)."""
    lenient = Draft202012Validator({})
    strict = BodySchema.compile({"type": "object", "required": ["csr"]}).fast
    checked = BodySchema(fast=strict, full=lenient)
    assert checked.refusal({}) == "invalid request (body): refused by the request schema"
    assert checked.refusal({"csr": "x"}) is None


def test_values_json_allows_but_no_schema_type_fits_are_refused() -> None:
    checked = BodySchema.compile(spec.SCHEMAS["TokenSpec"])
    for text in ('{"uses": NaN}', '{"uses": 1e400}', '{"uses": 100000000000000000000000}'):
        assert checked.refusal(json.loads(text)) is not None, text


def test_a_lone_surrogate_is_refused_as_not_text() -> None:
    """JSON lets a lone surrogate through (an escape, or CESU-8 bytes ``json.loads``
    keeps) and the schemas accept it as a string; the handlers encode fields as UTF-8, and
    such a body was answered 500. It is refused, naming the field."""
    checked = COMPILED["EnrollRequest"]
    for raw in (b'{"csr": "x\\ud800"}', b'{"csr": "x\xed\xa0\x80"}'):
        assert checked.refusal(json.loads(raw)) == (
            "invalid request (csr): not text (a lone UTF-16 surrogate)"
        ), raw
    refusal = checked.refusal({"csr": "x", "permissions": ["ok", "\udfff"]})
    assert refusal == "invalid request (permissions): not text (a lone UTF-16 surrogate)"
    assert checked.refusal({"\ud800": "x", "csr": "x"}) is not None  # a key: the schema
    assert checked.refusal({"csr": "é \U0001f600", "workflow": "naïve"}) is None
