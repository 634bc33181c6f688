"""The NGSI-LD query language (`q`): parse to an AST, compile to SQL/JSON path over `doc`, evaluate in Python.

GS CIM 009 v1.8 4.9. The SQL and the Python evaluator implement the same semantics, which are:

- A query term selects the *target items* of an entity: for each instance of the attribute
  (several for multi-attributes), descend into sub-attributes, then take the metadata member
  (`attr.observedAt`), the compound value path (`attr[a.b]` → `value.a.b`) or, for a plain
  attribute, the `value` of a Property, the `object` of a Relationship, the values of a
  `languageMap`, the members of a `valueList` / `objectList` and the `vocab` of a VocabProperty.
  Arrays are matched element-wise (SQL/JSON lax mode: one level of unwrapping).
- A comparison is true when *any* target item satisfies it; numbers compare with numbers,
  strings with strings (code point order), booleans with booleans, dateTimes as instants
  (strings in ISO 8601, `Z`, offset or naive = UTC, also `{"@type": "DateTime", "@value": ...}`),
  dates and times as strings of that shape. Items of another type never match.
- `!=` and `!~=` are true when the target items exist and *none* of them equals / matches.
- A bare attribute path tests existence; `!path` non-existence.
- `;` is AND and binds tighter than `|` (OR); parentheses group.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Literal

from psycopg import sql

from broker.query.params import Param
from broker.query.regex import check_portable_regex
from ngsi.errors import BadRequestData
from ngsi.timestamps import format_timestamp

Expand = Callable[[str], str]

METADATA_MEMBERS = frozenset(
    {"observedAt", "unitCode", "datasetId", "createdAt", "modifiedAt", "deletedAt", "instanceId", "lang"}
)
"""Members of an attribute instance that `attr.<member>` addresses instead of a sub-attribute."""

_TIMESTAMP_MEMBERS = frozenset({"observedAt", "createdAt", "modifiedAt", "deletedAt"})

ValueKind = Literal["number", "string", "boolean", "datetime", "date", "time", "uri"]
ORDERED_KINDS = frozenset({"number", "string", "datetime", "date", "time"})
Operator = Literal["==", "!=", ">", ">=", "<", "<=", "~=", "!~="]


# --------------------------------------------------------------------------------------------
# AST


@dataclass(frozen=True)
class AttrPath:
    """Where a query term looks: attribute, sub-attributes, then a metadata member or a value path."""

    attr: str
    sub_attrs: tuple[str, ...] = ()
    metadata: str | None = None
    value_path: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = ".".join((self.attr, *self.sub_attrs))
        if self.metadata:
            text += "." + self.metadata
        if self.value_path:
            text += "[" + ".".join(self.value_path) + "]"
        return text


@dataclass(frozen=True)
class Scalar:
    """One literal value of a query: its kind, the Python value and the text as written."""

    kind: ValueKind
    value: Any
    text: str


@dataclass(frozen=True)
class Range:
    """`low..high`, both ends included."""

    low: Scalar
    high: Scalar


@dataclass(frozen=True)
class ValueList:
    """`a,b,c`: equal to any of the values."""

    items: tuple[Scalar, ...]


@dataclass(frozen=True)
class Pattern:
    """A regular expression for `~=` / `!~=` (portable between Python and PostgreSQL)."""

    regex: str
    ignore_case: bool = False
    compiled: re.Pattern[str] = field(compare=False, repr=False, default=re.compile(""))


QValue = Scalar | Range | ValueList | Pattern


@dataclass(frozen=True)
class Comparison:
    """`path <op> value`."""

    path: AttrPath
    op: Operator
    value: QValue


@dataclass(frozen=True)
class Exists:
    """A bare attribute path (`negated=False`) or `!path` (`negated=True`)."""

    path: AttrPath
    negated: bool = False


@dataclass(frozen=True)
class And:
    """Terms joined by `;`."""

    terms: tuple[QExpr, ...]


@dataclass(frozen=True)
class Or:
    """Terms joined by `|`."""

    terms: tuple[QExpr, ...]


QExpr = Comparison | Exists | And | Or


# --------------------------------------------------------------------------------------------
# Parser

_ATTR_NAME_CHARS = re.compile(r"[A-Za-z0-9_:/#@\-]+")
_IRI_ATTR = re.compile(r"https?://[^=<>!~;|()\[\]]+")
_VALUE_PATH_KEY = re.compile(r"[^.\[\]]+")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}(?::[0-9]{2})?)?"
)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z?")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s\"<>\\^`{|}]+")
_OPERATORS: tuple[Operator, ...] = ("!~=", "==", "!=", ">=", "<=", "~=", ">", "<")


def parse_q(text: str) -> QExpr:
    """Parse a `q` parameter into its AST; raise BadRequestData naming the position of any error."""
    if text is None or not text.strip():
        raise BadRequestData("q: the query is empty", parameter="q")
    return _QParser(text).parse()


class _QParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # -- helpers -------------------------------------------------------------------------------
    def error(self, message: str, position: int | None = None) -> BadRequestData:
        at = self.pos if position is None else position
        return BadRequestData(f"q: {message} at position {at} of {self.text!r}", parameter="q", position=at)

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self) -> str:
        self.skip_spaces()
        return self.text[self.pos : self.pos + 1]

    # -- grammar -------------------------------------------------------------------------------
    def parse(self) -> QExpr:
        expr = self.parse_or()
        if self.peek():
            raise self.error(f"unexpected {self.text[self.pos]!r}")
        return expr

    def parse_or(self) -> QExpr:
        terms = [self.parse_and()]
        while self.peek() == "|":
            self.pos += 1
            terms.append(self.parse_and())
        return terms[0] if len(terms) == 1 else Or(tuple(terms))

    def parse_and(self) -> QExpr:
        terms = [self.parse_term()]
        while self.peek() == ";":
            self.pos += 1
            terms.append(self.parse_term())
        return terms[0] if len(terms) == 1 else And(tuple(terms))

    def parse_term(self) -> QExpr:
        char = self.peek()
        if char == "(":
            start = self.pos
            self.pos += 1
            inner = self.parse_or()
            if self.peek() != ")":
                raise self.error("missing ')' for the '(' at position " + str(start))
            self.pos += 1
            return inner
        if char == "!" and not self.text.startswith("!=", self.pos) and not self.text.startswith("!~=", self.pos):
            self.pos += 1
            return Exists(self.parse_path(), negated=True)
        if not char:
            raise self.error("expected an attribute, found the end of the query")
        path = self.parse_path()
        self.skip_spaces()
        op = next((o for o in _OPERATORS if self.text.startswith(o, self.pos)), None)
        if op is None:
            return Exists(path)
        op_pos = self.pos
        self.pos += len(op)
        self.skip_spaces()
        if op in ("~=", "!~="):
            return Comparison(path, op, self.parse_pattern())
        value = self.parse_value(op, op_pos)
        return Comparison(path, op, value)

    def parse_path(self) -> AttrPath:
        self.skip_spaces()
        start = self.pos
        iri = _IRI_ATTR.match(self.text, self.pos)
        if iri:
            # A full IRI keeps its dots; only a trailing `.observedAt`-like member is split off.
            names = [iri.group()]
            self.pos = iri.end()
            head, _, last = names[0].rpartition(".")
            if head and last in METADATA_MEMBERS:
                names = [head, last]
        else:
            names = [self.parse_name()]
            while self.text.startswith(".", self.pos):
                self.pos += 1
                names.append(self.parse_name())
        metadata = None
        if len(names) > 1 and names[-1] in METADATA_MEMBERS:
            metadata = names.pop()
        value_path: tuple[str, ...] = ()
        if self.text.startswith("[", self.pos):
            if metadata:
                raise self.error("a metadata member has no value path")
            close = self.text.find("]", self.pos)
            if close < 0:
                raise self.error("missing ']' in the attribute path")
            keys = self.text[self.pos + 1 : close].split(".")
            for key in keys:
                if not _VALUE_PATH_KEY.fullmatch(key):
                    raise self.error(f"invalid value path [{self.text[self.pos + 1 : close]}]")
            value_path = tuple(keys)
            self.pos = close + 1
        if not names[0]:
            raise self.error("expected an attribute name", start)
        return AttrPath(names[0], tuple(names[1:]), metadata, value_path)

    def parse_name(self) -> str:
        match = _ATTR_NAME_CHARS.match(self.text, self.pos)
        if not match:
            found = self.text[self.pos : self.pos + 1]
            raise self.error(f"expected an attribute name, found {found!r}" if found else "expected an attribute name")
        self.pos = match.end()
        return match.group()

    def read_value_text(self) -> tuple[str, int]:
        """Read the raw value up to the next top-level `;`, `|` or `)`, honouring quotes."""
        start = self.pos
        in_quotes = False
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if in_quotes:
                if char == "\\":
                    self.pos += 1
                elif char == '"':
                    in_quotes = False
            elif char == '"':
                in_quotes = True
            elif char in ";|)":
                break
            self.pos += 1
        if in_quotes:
            raise self.error("unterminated quoted string", start)
        return self.text[start : self.pos].rstrip(" \t"), start

    def parse_value(self, op: Operator, op_pos: int) -> QValue:
        raw, start = self.read_value_text()
        if not raw:
            raise self.error(f"missing value after {op!r}", start)
        parts = _split_outside_quotes(raw, ",")
        if len(parts) > 1:
            if op not in ("==", "!="):
                raise self.error(f"a value list only goes with '==' or '!=', not {op!r}", op_pos)
            items: list[Scalar] = []
            offset = start
            for part in parts:
                items.append(self.parse_scalar(part, offset))
                offset += len(part) + 1
            return ValueList(tuple(items))
        bounds = _split_outside_quotes(raw, "..")
        if len(bounds) == 2:
            if op not in ("==", "!="):
                raise self.error(f"a range only goes with '==' or '!=', not {op!r}", op_pos)
            low = self.parse_scalar(bounds[0], start)
            high = self.parse_scalar(bounds[1], start + len(bounds[0]) + 2)
            for end in (low, high):
                if end.kind not in ORDERED_KINDS:
                    raise self.error(f"a range needs numbers, strings or dates, not {end.text!r}", start)
            if low.kind != high.kind:
                raise self.error(f"both ends of the range {raw!r} must be of the same kind", start)
            return Range(low, high)
        if len(bounds) > 2:
            raise self.error(f"invalid range {raw!r}", start)
        value = self.parse_scalar(raw, start)
        if op not in ("==", "!=") and value.kind not in ORDERED_KINDS:
            raise self.error(f"{op!r} needs a number, string or date/time, not {value.text!r}", start)
        return value

    def parse_scalar(self, text: str, position: int) -> Scalar:
        stripped = text.strip(" \t")
        if not stripped:
            raise self.error("empty value", position)
        if stripped.startswith('"'):
            if len(stripped) < 2 or not stripped.endswith('"'):
                raise self.error(f"malformed quoted string {stripped}", position)
            try:
                value = json.loads(stripped)
            except ValueError:
                value = _unescape_quoted(stripped[1:-1])
            if not isinstance(value, str):
                raise self.error(f"malformed quoted string {stripped}", position)
            return Scalar("string", value, stripped)
        if stripped in ("true", "false"):
            return Scalar("boolean", stripped == "true", stripped)
        if _NUMBER.fullmatch(stripped):
            number: float | int = float(stripped) if any(c in stripped for c in ".eE") else int(stripped)
            if isinstance(number, float) and number in (float("inf"), float("-inf")):
                raise self.error(f"number out of range {stripped}", position)
            return Scalar("number", number, stripped)
        if _DATETIME.fullmatch(stripped):
            try:
                return Scalar("datetime", _parse_instant(stripped), stripped)
            except ValueError:
                raise self.error(f"invalid dateTime {stripped}", position) from None
        if _DATE.fullmatch(stripped):
            try:
                date.fromisoformat(stripped)
            except ValueError:
                raise self.error(f"invalid date {stripped}", position) from None
            return Scalar("date", stripped, stripped)
        if _TIME.fullmatch(stripped):
            hours, minutes, seconds = stripped.rstrip("Z").split(":")
            if int(hours) > 23 or int(minutes) > 59 or float(seconds) >= 61:
                raise self.error(f"invalid time {stripped}", position)
            return Scalar("time", stripped, stripped)
        if _URI.fullmatch(stripped):
            return Scalar("uri", stripped, stripped)
        raise self.error(f"invalid value {stripped!r} (strings must be in double quotes)", position)

    def parse_pattern(self) -> Pattern:
        start = self.pos
        if self.text.startswith('"', self.pos):
            raw, start = self.read_value_text()
            if not raw.endswith('"') or len(raw) < 2:
                raise self.error("malformed quoted regular expression", start)
            regex = _unescape_quoted(raw[1:-1])
        else:
            # An unquoted pattern runs to the next `;`, `|` or `)` outside its own groups and classes.
            depth = 0
            in_class = False
            while self.pos < len(self.text):
                char = self.text[self.pos]
                if char == "\\":
                    self.pos += 2
                    continue
                if in_class:
                    in_class = char != "]"
                elif char == "[":
                    in_class = True
                elif char == "(":
                    depth += 1
                elif char == ")":
                    if depth == 0:
                        break
                    depth -= 1
                elif char in ";|" and depth == 0:
                    break
                self.pos += 1
            self.pos = min(self.pos, len(self.text))
            regex = self.text[start : self.pos]
        if not regex:
            raise self.error("missing regular expression", start)
        body, ignore_case = check_portable_regex(regex, "q")
        return Pattern(body, ignore_case, re.compile(body, re.IGNORECASE if ignore_case else 0))


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current_start = 0
    index = 0
    in_quotes = False
    while index < len(text):
        char = text[index]
        if in_quotes:
            if char == "\\":
                index += 1
            elif char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif text.startswith(separator, index):
            parts.append(text[current_start:index])
            index += len(separator)
            current_start = index
            continue
        index += 1
    parts.append(text[current_start:])
    return parts


def _unescape_quoted(body: str) -> str:
    return re.sub(r"\\(.)", r"\1", body)


def _parse_instant(text: str) -> datetime:
    """An ISO 8601 dateTime as an aware UTC datetime (naive means UTC)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# --------------------------------------------------------------------------------------------
# Expansion


def expand_q(expr: QExpr, expand: Expand) -> QExpr:
    """Return `expr` with attribute and sub-attribute names expanded to IRIs (value paths stay as written)."""
    if isinstance(expr, And):
        return And(tuple(expand_q(term, expand) for term in expr.terms))
    if isinstance(expr, Or):
        return Or(tuple(expand_q(term, expand) for term in expr.terms))
    path = expr.path
    expanded = replace(path, attr=expand(path.attr), sub_attrs=tuple(expand(s) for s in path.sub_attrs))
    return replace(expr, path=expanded)


def expand_values(expr: QExpr, attributes: set[str], expand: Expand) -> QExpr:
    """`expandValues`: the text values compared with these attributes (expanded names, `expr` expanded too)
    are expanded with the @context like vocab terms, so `category=="barn"` finds a VocabularyProperty whose
    vocab is stored as the IRI `barn` stands for."""
    if isinstance(expr, And):
        return And(tuple(expand_values(term, attributes, expand) for term in expr.terms))
    if isinstance(expr, Or):
        return Or(tuple(expand_values(term, attributes, expand) for term in expr.terms))
    if not isinstance(expr, Comparison) or expr.path.attr not in attributes or expr.path.metadata is not None:
        return expr

    def expanded(scalar: Scalar) -> Scalar:
        if scalar.kind in ("string", "uri") and isinstance(scalar.value, str):
            return replace(scalar, value=expand(scalar.value))
        return scalar

    if isinstance(expr.value, Scalar):
        return replace(expr, value=expanded(expr.value))
    if isinstance(expr.value, ValueList):
        return replace(expr, value=ValueList(tuple(expanded(item) for item in expr.value.items)))
    return expr


def attribute_names(expr: QExpr) -> set[str]:
    """The (top-level) attribute names a query refers to, e.g. for a subscription's watched attributes."""
    if isinstance(expr, And | Or):
        return set().union(*(attribute_names(term) for term in expr.terms))
    return {expr.path.attr}


# --------------------------------------------------------------------------------------------
# SQL compiler (SQL/JSON path, lax mode)

# What a plain attribute path compares: GS CIM 009 4.9 "the value of the Property, the object of the
# Relationship", plus the values of the other attribute types of v1.8.
_TARGET_MEMBERS = ("value", "object", "languageMap.*", "valueList", "objectList", "objectList.object", "vocab")
_DATETIME_TARGET_MEMBERS = ("value", 'value."@value"')
# Numbers and booleans can only be values of a Property or ListProperty: objects, languageMaps and
# vocabs hold URIs and text. Looking only there is the same answer for ~25 % less CPU per entity.
_SCALAR_TARGET_MEMBERS = ("value", "valueList")
_INSTANT_GUARD = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}(:[0-9]{2})?)?$"
_DATE_GUARD = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_TIME_GUARD = r"^[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z?$"
# PostgreSQL's .datetime() does not read a `Z` suffix: UTC stamps are read with explicit templates
# into naive UTC timestamps and compared with the naive form of the query value.
_UTC_FRACTION_SHAPE = r"\.[0-9]{1,6}Z$"
_UTC_WHOLE_SHAPE = r":[0-9]{2}Z$"
_OFFSET_SHAPE = r"[+-][0-9]{2}(:[0-9]{2})?$"
_NAIVE_SHAPE = r"T[0-9:.]+$"
_UTC_TEMPLATES = ('YYYY-MM-DD"T"HH24:MI:SS.US"Z"', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')


def jsonpath_key(name: str) -> str:
    """A member name as a jsonpath string literal; JSON escaping is a valid jsonpath escaping."""
    return json.dumps(name, ensure_ascii=True)


class _Vars:
    """Collects the jsonpath variables of one path: `$v0`, `$v1`, ..."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def add(self, value: Any) -> str:
        name = f"v{len(self.values)}"
        self.values[name] = value
        return "$" + name


def compile_q(expr: QExpr, expand: Expand | None = None, *, table: str | None = None) -> sql.Composable:
    """Compile a parsed query to a boolean SQL expression over `current_entities.doc`.

    `expand` maps attribute terms to IRIs (None when `expr` is expanded already); `table` qualifies
    the `doc` column (e.g. an alias). Every user value travels as a parameter: the jsonpath text and
    its variables are both bound values.
    """
    if expand is not None:
        expr = expand_q(expr, expand)
    doc = sql.Identifier(table, "doc") if table else sql.Identifier("doc")
    return _compile(expr, doc)


def _compile(expr: QExpr, doc: sql.Composable) -> sql.Composable:
    if isinstance(expr, And):
        return sql.SQL("(") + sql.SQL(" AND ").join(_compile(t, doc) for t in expr.terms) + sql.SQL(")")
    if isinstance(expr, Or):
        return sql.SQL("(") + sql.SQL(" OR ").join(_compile(t, doc) for t in expr.terms) + sql.SQL(")")
    if isinstance(expr, Exists):
        exists = _path_exists(doc, _items_path(expr.path), {})
        return sql.SQL("NOT ") + exists if expr.negated else exists
    vars_ = _Vars()
    condition = _value_condition(expr, vars_)
    match = _path_exists(doc, _filtered_path(expr.path, condition, _target_members(expr)), vars_.values)
    if expr.op in ("!=", "!~="):
        present = _path_exists(doc, _items_path(expr.path), {})
        return sql.SQL("(") + present + sql.SQL(" AND NOT ") + match + sql.SQL(")")
    return match


def _path_exists(doc: sql.Composable, path: str, variables: dict[str, Any]) -> sql.Composable:
    return sql.SQL("jsonb_path_exists({}, {}::jsonpath, {}::jsonb, true)").format(
        doc, Param(path), Param(json.dumps(variables))
    )


def _is_datetime(expr: Comparison) -> bool:
    return any(s.kind == "datetime" for s in _scalars(expr.value))


def _target_members(expr: Comparison) -> tuple[str, ...]:
    """Which members of an instance a comparison can match (for a plain attribute path)."""
    if _is_datetime(expr):
        return _DATETIME_TARGET_MEMBERS
    kinds = {scalar.kind for scalar in _scalars(expr.value)}
    if kinds and kinds <= {"number", "boolean"}:
        return _SCALAR_TARGET_MEMBERS
    return _TARGET_MEMBERS


def _scalars(value: QValue) -> Iterator[Scalar]:
    if isinstance(value, Scalar):
        yield value
    elif isinstance(value, Range):
        yield value.low
        yield value.high
    elif isinstance(value, ValueList):
        yield from value.items


def _instances_path(path: AttrPath) -> str:
    text = "$." + jsonpath_key(path.attr) + "[*]"
    for sub in path.sub_attrs:
        text += "." + jsonpath_key(sub) + "[*]"
    return text


def _targets(path: AttrPath, members: tuple[str, ...] = _TARGET_MEMBERS) -> list[str]:
    """Relative (to an instance) accessors of the target items of a path."""
    if path.metadata:
        return [jsonpath_key(path.metadata)]
    if path.value_path:
        keys = ".".join("*" if key == "*" else jsonpath_key(key) for key in path.value_path)
        if len(path.value_path) == 1:  # `name[en]`, `name[*]`: a language of a LanguageProperty too
            return ['"value".' + keys, '"languageMap".' + keys]
        return ['"value".' + keys]
    return [".".join(_member_accessor(part) for part in member.split(".")) for member in members]


def _member_accessor(part: str) -> str:
    return part if part in ("*",) or part.startswith('"') else jsonpath_key(part)


def _items_path(path: AttrPath) -> str:
    """A path that yields something exactly when the target items exist."""
    base = _instances_path(path)
    targets = _targets(path)
    if len(targets) == 1:
        return base + "." + targets[0]
    return base + " ? (" + " || ".join(f"exists(@.{t})" for t in targets) + ")"


def _filtered_path(path: AttrPath, condition: str, members: tuple[str, ...]) -> str:
    base = _instances_path(path)
    targets = _targets(path, members)
    if len(targets) == 1:
        return f"{base}.{targets[0]} ? ({condition})"
    return base + " ? (" + " || ".join(f"exists(@.{t} ? ({condition}))" for t in targets) + ")"


def _value_condition(expr: Comparison, vars_: _Vars) -> str:
    """The filter condition on one target item `@` (for != and !~= the positive form)."""
    value = expr.value
    if isinstance(value, Pattern):
        flag = ' flag "i"' if value.ignore_case else ""
        return f"@ like_regex {jsonpath_key(value.regex)}{flag}"
    op = "==" if expr.op == "!=" else expr.op
    stamps = expr.path.metadata in _TIMESTAMP_MEMBERS
    if isinstance(value, Scalar):
        return _scalar_condition(op, value, vars_, stamps=stamps)
    if isinstance(value, Range):
        low = _scalar_condition(">=", value.low, vars_, stamps=stamps)
        high = _scalar_condition("<=", value.high, vars_, stamps=stamps)
        return f"({low}) && ({high})"
    return " || ".join(f"({_scalar_condition('==', item, vars_, stamps=stamps)})" for item in value.items)


def _scalar_condition(op: str, value: Scalar, vars_: _Vars, *, stamps: bool = False) -> str:
    """The condition on one target item; `stamps` when the items are the broker's own timestamps."""
    if value.kind == "datetime":
        instant: datetime = value.value
        if stamps and instant.microsecond % 1000 == 0:
            # observedAt, createdAt, modifiedAt and deletedAt are stored as UTC with milliseconds and
            # `Z` (docs/internals.md "Stored entity shape"; ngsi.timestamps), all of one width: their
            # text order is their time order. A text comparison costs a fraction of the four guarded
            # .datetime() branches below (about 6x less CPU on a full scan of 100,000 entities).
            return f"@ {op} {vars_.add(format_timestamp(instant))}"
        naive = vars_.add(instant.replace(tzinfo=None).isoformat())
        aware = vars_.add(instant.isoformat())
        # Each stored form is compared in exactly one branch, guarded by its shape: PostgreSQL raises
        # (even in silent mode) when it would compare a naive timestamp with an aware one.
        utc_fraction, utc_whole = (jsonpath_key(t) for t in _UTC_TEMPLATES)
        alternatives = [
            f"@ like_regex {jsonpath_key(_UTC_FRACTION_SHAPE)} && @.datetime({utc_fraction}) {op} {naive}.datetime()",
            f"@ like_regex {jsonpath_key(_UTC_WHOLE_SHAPE)} && @.datetime({utc_whole}) {op} {naive}.datetime()",
            f"@ like_regex {jsonpath_key(_OFFSET_SHAPE)} && @.datetime() {op} {aware}.datetime()",
            f"@ like_regex {jsonpath_key(_NAIVE_SHAPE)} && @.datetime() {op} {naive}.datetime()",
        ]
        return f"@ like_regex {jsonpath_key(_INSTANT_GUARD)} && (" + " || ".join(f"({a})" for a in alternatives) + ")"
    if value.kind == "date":
        return f"@ like_regex {jsonpath_key(_DATE_GUARD)} && @ {op} {vars_.add(value.value)}"
    if value.kind == "time":
        return f"@ like_regex {jsonpath_key(_TIME_GUARD)} && @ {op} {vars_.add(value.value)}"
    return f"@ {op} {vars_.add(value.value)}"


# --------------------------------------------------------------------------------------------
# Python evaluator (same semantics, for the notifier)


def matches_q(expr: QExpr, doc: dict[str, Any], expand: Expand | None = None) -> bool:
    """Evaluate a parsed query on a stored (expanded) entity doc."""
    if expand is not None:
        expr = expand_q(expr, expand)
    return _matches(expr, doc)


def _matches(expr: QExpr, doc: dict[str, Any]) -> bool:
    if isinstance(expr, And):
        return all(_matches(term, doc) for term in expr.terms)
    if isinstance(expr, Or):
        return any(_matches(term, doc) for term in expr.terms)
    if isinstance(expr, Exists):
        present = any(True for _ in _target_items(expr.path, doc, for_datetime=False))
        return not present if expr.negated else present
    items = list(_target_items(expr.path, doc, for_datetime=_is_datetime(expr)))
    predicate = _item_predicate(expr)
    hit = any(predicate(candidate) for item in items for candidate in _unwrap(item))
    if expr.op in ("!=", "!~="):
        present = any(True for _ in _target_items(expr.path, doc, for_datetime=False))
        return present and not hit
    return hit


def _target_items(path: AttrPath, doc: dict[str, Any], *, for_datetime: bool) -> Iterator[Any]:
    instances = _members([doc], path.attr, unwrap=True)
    for sub in path.sub_attrs:
        instances = _members(instances, sub, unwrap=True)
    if path.metadata:
        yield from _members(instances, path.metadata)
        return
    if path.value_path:
        items = _members(instances, "value")
        for key in path.value_path:
            items = _any_members(items) if key == "*" else _members(items, key)
        yield from items
        if len(path.value_path) == 1:  # a language of a LanguageProperty (`name[en]`, `name[*]`)
            maps = _members(instances, "languageMap")
            key = path.value_path[0]
            yield from _any_members(maps) if key == "*" else _members(maps, key)
        return
    if for_datetime:
        values = _members(instances, "value")
        yield from values
        yield from _members(values, "@value")
        return
    yield from _members(instances, "value")
    yield from _members(instances, "object")
    for language_map in _members(instances, "languageMap"):
        if isinstance(language_map, dict):
            yield from language_map.values()
    yield from _members(instances, "valueList")
    object_list = _members(instances, "objectList")
    yield from object_list
    yield from _members(object_list, "object")
    yield from _members(instances, "vocab")


def _members(items: Iterable[Any], key: str, *, unwrap: bool = False) -> list[Any]:
    """Lax-mode member access: arrays are unwrapped one level; missing members are skipped."""
    found: list[Any] = []
    for item in items:
        for element in item if isinstance(item, list) else (item,):
            if isinstance(element, dict) and key in element:
                value = element[key]
                if unwrap and isinstance(value, list):
                    found.extend(value)
                else:
                    found.append(value)
    return found


def _any_members(items: Iterable[Any]) -> list[Any]:
    """`.*` in lax mode: the values of every member of the objects among `items`."""
    return [value for item in items if isinstance(item, dict) for value in item.values()]


def _unwrap(item: Any) -> list[Any]:
    return item if isinstance(item, list) else [item]


def _item_predicate(expr: Comparison) -> Callable[[Any], bool]:
    value = expr.value
    if isinstance(value, Pattern):
        compiled = value.compiled
        return lambda item: isinstance(item, str) and compiled.search(item) is not None
    op = "==" if expr.op == "!=" else expr.op
    if isinstance(value, Scalar):
        return lambda item: _compare(item, op, value)
    if isinstance(value, Range):
        low, high = value.low, value.high
        return lambda item: _compare(item, ">=", low) and _compare(item, "<=", high)
    items = value.items
    return lambda item: any(_compare(item, "==", scalar) for scalar in items)


_DATE_SHAPE = re.compile(_DATE_GUARD)
_TIME_SHAPE = re.compile(_TIME_GUARD)
_INSTANT_SHAPE = re.compile(_INSTANT_GUARD)


def _compare(item: Any, op: str, scalar: Scalar) -> bool:
    left: Any
    right: Any = scalar.value
    kind = scalar.kind
    if kind == "number":
        if isinstance(item, bool) or not isinstance(item, int | float):
            return False
        left = item
    elif kind == "boolean":
        if not isinstance(item, bool):
            return False
        left = item
    elif kind == "datetime":
        if not isinstance(item, str) or not _INSTANT_SHAPE.match(item):
            return False
        try:
            left = _parse_instant(item)
        except ValueError:
            return False
    elif kind == "date":
        if not isinstance(item, str) or not _DATE_SHAPE.match(item):
            return False
        left = item
    elif kind == "time":
        if not isinstance(item, str) or not _TIME_SHAPE.match(item):
            return False
        left = item
    else:
        if not isinstance(item, str):
            return False
        left = item
    return _apply(left, op, right)


def _apply(left: Any, op: str, right: Any) -> bool:
    if op == "==":
        return bool(left == right)
    if op == ">":
        return bool(left > right)
    if op == ">=":
        return bool(left >= right)
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    raise ValueError(f"unexpected operator {op}")
