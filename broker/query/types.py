"""Entity selection by type expression, id list and idPattern: parse, compile to SQL, evaluate in Python.

GS CIM 009 v1.8 4.17 (entity type selection): `type=A,B` (any of), and the expression form
`(A;B)|C` where `;` is AND, `|` and `,` are OR, and parentheses group. An entity matches a
type name when that (expanded) type is among its types.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from psycopg import sql

from broker.query.params import Param
from broker.query.regex import check_portable_regex
from ngsi.errors import BadRequestData

Expand = Callable[[str], str]


@dataclass(frozen=True)
class TypeName:
    """One entity type, as written or expanded."""

    name: str


@dataclass(frozen=True)
class TypeAnd:
    """Types joined by `;`: the entity has all of them."""

    terms: tuple[TypeExpr, ...]


@dataclass(frozen=True)
class TypeOr:
    """Types joined by `|` or `,`: the entity has any of them."""

    terms: tuple[TypeExpr, ...]


TypeExpr = TypeName | TypeAnd | TypeOr

_TYPE_NAME = re.compile(r"[^;|,()\s]+")


def parse_types(text: str) -> TypeExpr:
    """Parse the `type` parameter; raise BadRequestData naming the position of any error."""
    if text is None or not text.strip():
        raise BadRequestData("type: the type selection is empty", parameter="type")
    return _TypeParser(text).parse()


class _TypeParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> BadRequestData:
        return BadRequestData(
            f"type: {message} at position {self.pos} of {self.text!r}", parameter="type", position=self.pos
        )

    def peek(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1
        return self.text[self.pos : self.pos + 1]

    def parse(self) -> TypeExpr:
        expr = self.parse_or()
        if self.peek():
            raise self.error(f"unexpected {self.text[self.pos]!r}")
        return expr

    def parse_or(self) -> TypeExpr:
        terms = [self.parse_and()]
        while self.peek() in ("|", ","):
            self.pos += 1
            terms.append(self.parse_and())
        return terms[0] if len(terms) == 1 else TypeOr(tuple(terms))

    def parse_and(self) -> TypeExpr:
        terms = [self.parse_atom()]
        while self.peek() == ";":
            self.pos += 1
            terms.append(self.parse_atom())
        return terms[0] if len(terms) == 1 else TypeAnd(tuple(terms))

    def parse_atom(self) -> TypeExpr:
        char = self.peek()
        if char == "(":
            self.pos += 1
            inner = self.parse_or()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.pos += 1
            return inner
        match = _TYPE_NAME.match(self.text, self.pos)
        if not match:
            raise self.error("expected a type name" + (f", found {char!r}" if char else ""))
        self.pos = match.end()
        return TypeName(match.group())


def expand_types(expr: TypeExpr, expand: Expand) -> TypeExpr:
    """Return `expr` with every type name expanded to its IRI."""
    if isinstance(expr, TypeName):
        return TypeName(expand(expr.name))
    terms = tuple(expand_types(term, expand) for term in expr.terms)
    return TypeAnd(terms) if isinstance(expr, TypeAnd) else TypeOr(terms)


def type_names(expr: TypeExpr) -> set[str]:
    """Every type name the expression mentions."""
    if isinstance(expr, TypeName):
        return {expr.name}
    return set().union(*(type_names(term) for term in expr.terms))


def compile_types(expr: TypeExpr, expand: Expand | None = None, *, table: str | None = None) -> sql.Composable:
    """A boolean SQL expression over `types text[]`, served by the GIN index (`&&` and `@>`)."""
    if expand is not None:
        expr = expand_types(expr, expand)
    column = sql.Identifier(table, "types") if table else sql.Identifier("types")
    return _compile(expr, column)


def _compile(expr: TypeExpr, column: sql.Composable) -> sql.Composable:
    # Type IRIs go into the statement as quoted literals, not parameters: psycopg prepares a statement
    # after a few executions and PostgreSQL then may switch to a generic plan, which cannot see how
    # common a `$1` type is, guesses 0.5 % and ANDs the GIN bitmap of *every* entity of a common type
    # into geo and q queries (26 ms of 28 at 100,000 entities). With the IRIs in the text, even a
    # generic plan reads the type's frequency from the column statistics. Values (q, geo) stay parameters.
    if isinstance(expr, TypeName):
        return sql.SQL("{} @> {}::text[]").format(column, sql.Literal([expr.name]))
    names = [term.name for term in expr.terms if isinstance(term, TypeName)]
    if len(names) == len(expr.terms):
        operator = "@>" if isinstance(expr, TypeAnd) else "&&"
        return sql.SQL("{} " + operator + " {}::text[]").format(column, sql.Literal(names))
    joiner = " AND " if isinstance(expr, TypeAnd) else " OR "
    return sql.SQL("(") + sql.SQL(joiner).join(_compile(term, column) for term in expr.terms) + sql.SQL(")")


def matches_types(expr: TypeExpr, types: Iterable[str], expand: Expand | None = None) -> bool:
    """Whether an entity with these (expanded) types is selected by the expression."""
    if expand is not None:
        expr = expand_types(expr, expand)
    return _matches(expr, frozenset(types))


def _matches(expr: TypeExpr, types: frozenset[str]) -> bool:
    if isinstance(expr, TypeName):
        return expr.name in types
    if isinstance(expr, TypeAnd):
        return all(_matches(term, types) for term in expr.terms)
    return any(_matches(term, types) for term in expr.terms)


# --------------------------------------------------------------------------------------------
# Entity ids

_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")


def parse_ids(text: str) -> tuple[str, ...]:
    """The `id` parameter: a comma-separated list of entity ids, each a URI."""
    ids = tuple(part.strip() for part in (text or "").split(","))
    for position, entity_id in enumerate(ids):
        if not _URI.fullmatch(entity_id):
            raise BadRequestData(
                f"id: entry {position + 1} ({entity_id!r}) is not a URI", parameter="id", value=entity_id
            )
    return ids


def compile_ids(ids: Sequence[str], *, table: str | None = None) -> sql.Composable:
    """`id = ANY(ids)`, served by the primary key."""
    column = sql.Identifier(table, "id") if table else sql.Identifier("id")
    return sql.SQL("{} = ANY({}::text[])").format(column, Param(list(ids)))


@dataclass(frozen=True)
class IdPattern:
    """A validated `idPattern`: the same regular expression for PostgreSQL and Python."""

    regex: str
    ignore_case: bool
    compiled: re.Pattern[str]


def parse_id_pattern(text: str) -> IdPattern:
    """Validate an `idPattern` (compiles in Python, nothing PostgreSQL ARE reads differently)."""
    regex, ignore_case = check_portable_regex(text, "idPattern")
    return IdPattern(regex, ignore_case, re.compile(regex, re.IGNORECASE if ignore_case else 0))


def compile_id_pattern(pattern: IdPattern, *, table: str | None = None) -> sql.Composable:
    """`id ~ pattern` (or `~*` when case-insensitive): unanchored search, like Python's `re.search`."""
    column = sql.Identifier(table, "id") if table else sql.Identifier("id")
    operator = "~*" if pattern.ignore_case else "~"
    return sql.SQL("{} " + operator + " {}").format(column, Param(pattern.regex))


def matches_id_pattern(pattern: IdPattern, entity_id: str) -> bool:
    """Whether `entity_id` matches (anywhere, as in PostgreSQL)."""
    return pattern.compiled.search(entity_id) is not None
