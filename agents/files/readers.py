"""Streaming record readers for csv, ndjson, json, xml and fixed-width files, resumable from a saved position.

Each reader yields `Record`s whose `values` follow the order of `mapping.columns()`, with the
record's original text (for the quarantine) and the position to resume after it. Line-based
formats (csv, ndjson, fixed-width) resume by byte offset (a seek); json and xml by record count.
Memory stays constant whatever the file size: json goes through ijson, xml through iterparse
with every finished record removed from the tree.
"""

from __future__ import annotations

import csv
import io
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import ijson
import orjson

from agents.files.mapping import Mapping as FileMapping
from agents.files.mapping import MappingError


class Record(NamedTuple):
    """One source record: its values (mapping column order), its original text, the position after it.

    `error` is set (and `values` empty) when the record could not even be parsed (a broken JSON line).
    """

    values: Sequence[Any]
    raw: str
    position: int
    error: str | None = None


def record_values(record: Mapping[str, Any], columns: Sequence[str], fields: Mapping[str, str]) -> list[Any]:
    """The values of a JSON-like record for `columns`; `fields` maps a column to a dotted path inside the record."""
    values: list[Any] = []
    for column in columns:
        path = fields.get(column, column)
        if path in record:
            values.append(record[path])
            continue
        node: Any = record
        for part in path.split("."):
            if isinstance(node, Mapping):
                node = node.get(part)
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                node = None
                break
        values.append(node)
    return values


class RecordStream:
    """The records of one file from a position on; `bytes_read` and `size` drive a progress bar."""

    def __init__(self, path: Path, mapping: FileMapping, start: int = 0) -> None:
        self.path = path
        self.mapping = mapping
        self.columns = mapping.columns()
        self.start = start
        self.size = path.stat().st_size
        self.by_offset = mapping.source.format in ("csv", "ndjson", "fixed-width")
        self.header: list[str] = []
        """The column names of a csv file (its header line, or `source.column_names`), once reading began."""
        self._file: BinaryIO = open(path, "rb")
        self._offset = 0

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> RecordStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def bytes_read(self) -> int:
        """How far into the file the reader is (bytes)."""
        if self.by_offset:
            return self._offset
        try:
            return self._file.tell()
        except (OSError, ValueError):
            return self.size

    def __iter__(self) -> Iterator[Record]:
        kind = self.mapping.source.format
        if kind == "csv":
            return self._csv()
        if kind == "fixed-width":
            return self._fixed_width()
        if kind == "ndjson":
            return self._ndjson()
        if kind == "json":
            return self._json()
        return self._xml()

    # -- line-based formats ----------------------------------------------------------------------

    def _skip_preamble(self) -> None:
        for _ in range(self.mapping.source.skip_lines):
            self._file.readline()

    def _seek_data(self, data_start: int) -> None:
        self._offset = max(self.start, data_start)
        self._file.seek(self._offset)

    def _lines(self, held: list[str]) -> Iterator[str]:
        encoding = self.mapping.source.encoding
        for line in self._file:
            self._offset += len(line)
            text = line.decode(encoding)
            held.append(text)
            yield text

    def _csv(self) -> Iterator[Record]:
        source = self.mapping.source
        self._skip_preamble()
        if source.header:
            first = self._file.readline().decode(source.encoding).lstrip("\ufeff")
            header = [name.strip() for name in next(csv.reader([first], delimiter=source.delimiter,
                                                              quotechar=source.quote), [])]  # fmt: skip
        else:
            header = list(source.column_names)
        self.header = header
        positions = _csv_positions(self.mapping, header, self.path.name)
        self._seek_data(self._file.tell())
        held: list[str] = []
        reader = csv.reader(self._lines(held), delimiter=source.delimiter, quotechar=source.quote)
        width = len(header)
        # itemgetter picks the mapped cells in C; a single column still comes back as a tuple.
        pick = itemgetter(*positions) if len(positions) > 1 else (lambda row: tuple(row[p] for p in positions))
        for row in reader:
            raw = (held[0] if len(held) == 1 else "".join(held)).rstrip("\r\n")
            held.clear()
            values: Sequence[str | None]
            if len(row) >= width:
                values = pick(row)
            else:
                values = [row[p] if p < len(row) else None for p in positions]
            yield Record(values, raw, self._offset)

    def _fixed_width(self) -> Iterator[Record]:
        widths = [self.mapping.source.widths[column] for column in self.columns]
        self._skip_preamble()
        self._seek_data(self._file.tell())
        held: list[str] = []
        for line in self._lines(held):
            held.clear()
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            yield Record([text[start:end].strip() for start, end in widths], text, self._offset)

    def _ndjson(self) -> Iterator[Record]:
        fields = self.mapping.source.fields
        self._seek_data(0)
        held: list[str] = []
        for line in self._lines(held):
            held.clear()
            text = line.strip()
            if not text:
                continue
            try:
                record = orjson.loads(text)
            except orjson.JSONDecodeError as error:
                yield Record((), text, self._offset, f"line is not JSON: {error}")
                continue
            if not isinstance(record, dict):
                yield Record((), text, self._offset, "line is not a JSON object")
                continue
            yield Record(record_values(record, self.columns, fields), text, self._offset)

    # -- document formats (resume by record count) ------------------------------------------------

    def _json(self) -> Iterator[Record]:
        fields = self.mapping.source.fields
        count = 0
        try:
            for record in ijson.items(self._file, self.mapping.source.records, use_float=True):
                count += 1
                if count <= self.start:
                    continue
                raw = orjson.dumps(record).decode()
                if not isinstance(record, dict):
                    yield Record((), raw, count, "record is not a JSON object")
                    continue
                yield Record(record_values(record, self.columns, fields), raw, count)
        except ijson.JSONError as error:
            reason = f"{self.path.name} is not valid JSON after record {count}: {error}"
            raise MappingError(self.mapping.path, "source.format", reason) from error

    def _xml(self) -> Iterator[Record]:
        wanted = [part for part in self.mapping.source.records.strip("/").split("/") if part]
        fields = self.mapping.source.fields
        stack: list[ElementTree.Element] = []
        tags: list[str] = []
        count = 0
        try:
            for event, element in ElementTree.iterparse(self._file, events=("start", "end")):
                if event == "start":
                    stack.append(element)
                    tags.append(_local(element.tag))
                    continue
                is_record = tags[-len(wanted) :] == wanted
                stack.pop()
                tags.pop()
                if not is_record:
                    continue
                count += 1
                if count > self.start:
                    raw = ElementTree.tostring(element, encoding="unicode").strip()
                    yield Record([_xml_value(element, fields.get(c, c)) for c in self.columns], raw, count)
                element.clear()
                if stack:
                    stack[-1].remove(element)
        except ElementTree.ParseError as error:
            reason = f"{self.path.name} is not well-formed XML after record {count}: {error}"
            raise MappingError(self.mapping.path, "source.format", reason) from error


def _csv_positions(mapping: FileMapping, header: Sequence[str], file_name: str) -> list[int]:
    """Where each column the mapping reads is in a csv row with this header."""
    columns = mapping.columns()
    missing = [column for column in columns if column not in header]
    if missing:
        raise MappingError(mapping.path, "source",
                           f"column {missing[0]!r} is not in the header of {file_name} "
                           f"(it has: {', '.join(header)})")  # fmt: skip
    return [list(header).index(column) for column in columns]


def record_from_text(raw: str, mapping: FileMapping, *, header: Sequence[str] = (), file_name: str = "") -> Record:
    """One record read again from its original text (a quarantined row), with `mapping` as it is now.

    A csv row needs the `header` of its file (`RecordStream.header`); without one the mapping's
    `source.column_names` are used. The position of the returned record is 0.
    """
    source = mapping.source
    columns = mapping.columns()
    if source.format == "csv":
        names = list(header) or list(source.column_names)
        positions = _csv_positions(mapping, names, file_name or "the file")
        row = next(csv.reader(io.StringIO(raw, newline=""), delimiter=source.delimiter, quotechar=source.quote), [])
        return Record([row[p] if p < len(row) else None for p in positions], raw, 0)
    if source.format == "fixed-width":
        widths = [source.widths[column] for column in columns]
        return Record([raw[start:end].strip() for start, end in widths], raw, 0)
    if source.format == "xml":
        try:
            element = ElementTree.fromstring(raw)
        except ElementTree.ParseError as error:
            return Record((), raw, 0, f"record is not well-formed XML: {error}")
        return Record([_xml_value(element, source.fields.get(c, c)) for c in columns], raw, 0)
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return Record((), raw, 0, f"record is not JSON: {error}")
    if not isinstance(record, dict):
        return Record((), raw, 0, "record is not a JSON object")
    return Record(record_values(record, columns, source.fields), raw, 0)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_value(element: ElementTree.Element, path: str) -> str | None:
    """`a/b` → text of a child; `@x` or `a/@x` → an attribute; a bare name → child text, else attribute."""
    if "@" in path:
        element_path, _, attribute = path.rpartition("@")
        target = element.find(element_path.rstrip("/")) if element_path.rstrip("/") else element
        return None if target is None else target.get(attribute)
    child = _find_local(element, path)
    if child is not None:
        return child.text
    if "/" not in path:
        return element.get(path)
    return None


def _find_local(element: ElementTree.Element, path: str) -> ElementTree.Element | None:
    node: ElementTree.Element | None = element
    for part in path.split("/"):
        if node is None:
            return None
        node = next((child for child in node if _local(child.tag) == part), None)
    return node


def open_records(path: Path, mapping: FileMapping, start: int = 0) -> RecordStream:
    """The records of `path` from `start` (a byte offset for line formats, a record count otherwise)."""
    return RecordStream(path, mapping, start)


def records_of_text(text: str, mapping: FileMapping) -> Iterator[Record]:
    """The records of a small document given as text (tests, one-off payloads)."""
    with tempfile.NamedTemporaryFile("wb", suffix=".data", delete=False) as handle:
        handle.write(text.encode(mapping.source.encoding))
    path = Path(handle.name)
    try:
        with open_records(path, mapping) as stream:
            yield from stream
    finally:
        path.unlink(missing_ok=True)


__all__ = ["Record", "RecordStream", "open_records", "record_from_text", "record_values", "records_of_text"]
