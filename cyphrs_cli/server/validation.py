"""Request bodies checked against the schemas ``server.spec`` publishes.

Two implementations of JSON Schema 2020-12, both from the field: ``jsonschema_rs`` (Rust)
decides whether a body is valid, in about 0.2 µs; python-jsonschema explains a body found
invalid, so the problem+json text names the same field and reason as it always did.
python-jsonschema alone cost every accepted request about 20 µs (measured on an
enrollment body), for a walk that finds nothing on the path every agent takes.

The two are held to agree by ``tests/unit/server/test_request_validation.py`` (generated
bodies for every request schema). Should only the fast one refuse a body, it is refused
all the same, with a message that says the schema refused it: the safe side. A body both
accept is still refused when a string in it is not text (a lone surrogate, ``_not_text``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BodySchema:
    """One request schema, compiled once per application by both validators."""

    fast: Any  # jsonschema_rs validator: ``is_valid`` only
    full: Any  # jsonschema.Draft202012Validator: the explanation

    @classmethod
    def compile(cls, schema: dict[str, Any]) -> BodySchema:
        import jsonschema_rs
        from jsonschema import Draft202012Validator

        return cls(jsonschema_rs.validator_for(schema), Draft202012Validator(schema))

    def refusal(self, document: Any) -> str | None:
        """None when ``document`` is valid; else one line naming where and why."""
        try:
            if self.fast.is_valid(document):
                return _not_text(document)
        except (ValueError, TypeError, OverflowError):  # a value it cannot represent
            pass
        error = next(iter(self.full.iter_errors(document)), None)
        if error is None:
            return "invalid request (body): refused by the request schema"
        where = "/".join(str(p) for p in error.absolute_path) or "body"
        return f"invalid request ({where}): {error.message[:200]}"


def _not_text(document: Any) -> str | None:
    """The refusal of a valid body holding a string that is not text: a lone UTF-16
    surrogate, which JSON lets through (a ``\\ud800`` escape, or CESU-8 bytes that
    ``json.loads`` decodes with ``surrogatepass``) and every schema accepts as a string,
    but which no field can be encoded as UTF-8 from; the handlers encode them, and such a
    body was answered 500. None when every string is text."""
    if isinstance(document, dict):
        for key, value in document.items():
            if _holds_surrogate(value):
                return f"invalid request ({key}): not text (a lone UTF-16 surrogate)"
    return None


def _holds_surrogate(value: Any) -> bool:
    """Whether ``value`` (a valid body's field: text, a list of text, a number) holds a
    string UTF-8 cannot encode. ASCII, the common case, is settled without encoding."""
    if isinstance(value, str):
        if value.isascii():
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, list):
        return any(_holds_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(_holds_surrogate(k) or _holds_surrogate(v) for k, v in value.items())
    return False
