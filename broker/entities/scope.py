"""The scope query language (GS CIM 009 4.19): parse `scopeQ` and compile it to SQL over `scope text[]`."""

from __future__ import annotations

import re

from psycopg import sql

from broker.query.params import Param
from ngsi.errors import BadRequestData

SEGMENT = re.compile(r"[^/#+,;()\s]+|\+|#")


def scope_regex(pattern: str) -> str:
    """One scope pattern as an anchored regex: `+` is one level, a trailing `#` any levels below (or none)."""
    if not pattern.startswith("/"):
        raise BadRequestData(f"scopeQ: {pattern!r} must start with '/'", parameter="scopeQ")
    if pattern == "/#":
        return "^/.*$"
    parts = pattern[1:].split("/")
    regex = ""
    for position, part in enumerate(parts):
        if part == "#" and position == len(parts) - 1:
            return "^" + regex + "(/.*)?$"
        if part == "+":
            regex += "/[^/]+"
        elif part and SEGMENT.fullmatch(part) and part not in ("#", "+"):
            regex += "/" + re.escape(part)
        else:
            raise BadRequestData(f"scopeQ: invalid scope level {part!r} in {pattern!r}", parameter="scopeQ")
    return "^" + regex + "$"


def compile_scope_q(text: str) -> sql.Composable:
    """`a,b` is OR, `a;b` AND (AND binds tighter); each pattern must match one of the entity's scopes."""
    if not text.strip():
        raise BadRequestData("scopeQ is empty", parameter="scopeQ")
    alternatives = []
    for alternative in text.split(","):
        conditions = [
            sql.SQL("EXISTS (SELECT 1 FROM unnest(scope) AS s WHERE s ~ {})").format(Param(scope_regex(p.strip())))
            for p in alternative.split(";")
        ]
        alternatives.append(sql.SQL("(") + sql.SQL(" AND ").join(conditions) + sql.SQL(")"))
    return sql.SQL("(") + sql.SQL(" OR ").join(alternatives) + sql.SQL(")")
