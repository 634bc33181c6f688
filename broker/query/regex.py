"""Checks that a user's regular expression means the same in Python `re` and in PostgreSQL's ARE engine."""

from __future__ import annotations

import re

from ngsi.errors import BadRequestData

_LEADING_CASE_FLAG = "(?i)"

# Constructs Python accepts but PostgreSQL's Advanced Regular Expressions reject or read differently.
_UNPORTABLE_GROUPS = {
    "(?P": "named groups",
    "(?>": "atomic groups",
    "(?(": "conditional groups",
}


def check_portable_regex(pattern: str, parameter: str) -> tuple[str, bool]:
    """Validate `pattern` for use both in Python and PostgreSQL; return (pattern, ignore_case).

    A leading `(?i)` is split off and returned as the case-insensitive flag; any other construct
    that Python and PostgreSQL ARE read differently is rejected with BadRequestData naming
    `parameter` and the position of the offending construct.
    """
    ignore_case = False
    body = pattern
    if body.startswith(_LEADING_CASE_FLAG):
        ignore_case = True
        body = body[len(_LEADING_CASE_FLAG) :]
    if body == "" and pattern == "":
        raise BadRequestData(f"{parameter}: the regular expression is empty", parameter=parameter)
    try:
        re.compile(body)
    except re.error as error:
        raise BadRequestData(
            f"{parameter}: invalid regular expression {pattern!r}: {error.msg}"
            + (f" at position {error.pos}" if error.pos is not None else ""),
            parameter=parameter,
        ) from None
    _reject_unportable_constructs(body, pattern, parameter)
    return body, ignore_case


def _reject_unportable_constructs(body: str, pattern: str, parameter: str) -> None:
    offset = len(pattern) - len(body)
    in_class = False
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            escaped = body[index + 1 : index + 2]
            if escaped in ("b", "B"):
                _unportable(parameter, pattern, index + offset, f"'\\{escaped}' (word boundaries differ)")
            if escaped == "x":
                _unportable(parameter, pattern, index + offset, "'\\x' escapes")
            index += 2
            continue
        if in_class:
            if char == "[" and body[index + 1 : index + 2] in (":", "=", "."):
                _unportable(parameter, pattern, index + offset, "POSIX bracket classes like [:alpha:]")
            if char == "]":
                in_class = False
            index += 1
            continue
        if char == "[":
            in_class = True
            # A ']' right after '[' or '[^' is a literal member of the class in both engines.
            index += 1
            if body[index : index + 1] == "^":
                index += 1
            if body[index : index + 1] == "]":
                index += 1
            continue
        if char == "(" and body[index + 1 : index + 2] == "?":
            group = body[index : index + 3]
            if group in _UNPORTABLE_GROUPS:
                _unportable(parameter, pattern, index + offset, _UNPORTABLE_GROUPS[group])
            if group == "(?<" and body[index + 3 : index + 4] not in ("=", "!"):
                _unportable(parameter, pattern, index + offset, "named groups")
            if body[index + 2 : index + 3] not in (":", "=", "!", "<", "#"):
                _unportable(parameter, pattern, index + offset, "inline flags other than a leading (?i)")
        if char in "*+?}" and body[index + 1 : index + 2] == "+":
            _unportable(parameter, pattern, index + offset, "possessive quantifiers")
        if char == "{" and body[index + 1 : index + 2] == ",":
            _unportable(parameter, pattern, index + offset, "'{,n}' quantifiers")
        index += 1


def _unportable(parameter: str, pattern: str, position: int, construct: str) -> None:
    raise BadRequestData(
        f"{parameter}: regular expression {pattern!r} uses {construct} at position {position},"
        " which the broker does not support",
        parameter=parameter,
        position=position,
    )
