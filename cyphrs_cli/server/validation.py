"""Request bodies checked against the schemas ``server.spec`` publishes.

Two implementations of JSON Schema 2020-12, both from the field: ``jsonschema_rs`` (Rust)
decides whether a body is valid, in about 0.2 µs; python-jsonschema explains a body found
invalid, so the problem+json text names the same field and reason as it always did.
python-jsonschema alone cost every accepted request about 20 µs (measured on an
enrollment body), for a walk that finds nothing on the path every agent takes.

The two are held to agree by ``tests/unit/server/test_request_validation.py`` (generated
bodies for every request schema). Should only the fast one refuse a body, it is refused
all the same, with a message that says the schema refused it: the safe side.
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
                return None
        except (ValueError, TypeError, OverflowError):  # a value it cannot represent
            pass
        error = next(iter(self.full.iter_errors(document)), None)
        if error is None:
            return "invalid request (body): refused by the request schema"
        where = "/".join(str(p) for p in error.absolute_path) or "body"
        return f"invalid request ({where}): {error.message[:200]}"
