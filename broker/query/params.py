"""SQL fragments that carry their own parameter values, so compiled filters compose without string building."""

from __future__ import annotations

from typing import Any

from psycopg import sql


class Param(sql.Composable):
    """A value sent to PostgreSQL as a query parameter: renders as `%s` and keeps the value.

    Compose it with `psycopg.sql` like any other fragment; execute the final statement with
    `cursor.execute(statement, bound_params(statement))`. Never mix with hand-written `%s`.
    """

    def __init__(self, value: Any) -> None:
        super().__init__(value)

    @property
    def value(self) -> Any:
        return self._obj

    def as_bytes(self, context: Any = None) -> bytes:
        return b"%s"

    def as_string(self, context: Any = None) -> str:
        return "%s"


def bound_params(statement: sql.Composable) -> list[Any]:
    """The values of every `Param` in `statement`, in the order of their placeholders."""
    values: list[Any] = []
    _collect(statement, values)
    return values


def _collect(node: sql.Composable, values: list[Any]) -> None:
    if isinstance(node, Param):
        values.append(node.value)
    elif isinstance(node, sql.Composed):
        for part in node:
            _collect(part, values)
