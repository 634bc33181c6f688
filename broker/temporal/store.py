"""SQL over the TRoE history tables (entities, attributes, subAttributes): reads, aggregation, provision.

Only Orion-LD's TRoE columns are used, so the same queries answer over a history Orion-LD wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from broker.query import Param, bound_params
from broker.storage.history import ATTRIBUTE_COLUMNS, HistoryRows, write_history
from broker.temporal.durations import Period
from broker.temporal.parameters import TimeFilter
from broker.temporal.provision import CopyLines

EPOCH = datetime(1970, 1, 1)

COPY_CHUNK_LINES = 2000
"""COPY lines sent per write: about 300 kB, large enough to amortize the call, small enough to stream."""

ISO_MS = '\'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\''

# GS CIM 009 4.5.7: `observedAt` is the default temporal property; instances whose source gave none
# are placed at their write time, as the Grafana view does (broker_config/sql/troe.sql).
TIME_COLUMNS = {
    "observedAt": sql.SQL("coalesce(a.observedAt, a.ts)"),
    "modifiedAt": sql.SQL("a.ts"),
    "createdAt": sql.SQL("a.ts"),
}

AGGREGATE_SQL = {
    "totalCount": "count(*)",
    "distinctCount": "count(DISTINCT coalesce(a.number::text, a.text, a.boolean::text, a.datetime::text,"
    " a.compound::text))",
    "sum": "sum(a.number)",
    "avg": "avg(a.number)",
    "min": "min(a.number)",
    "max": "max(a.number)",
    "stddev": "stddev_samp(a.number)",
    "sumsq": "sum(a.number * a.number)",
}


@dataclass(frozen=True, slots=True)
class EntityFilter:
    """Which entities a temporal query selects, in expanded names; `extra` is SQL over `current_entities`."""

    ids: Sequence[str] = ()
    id_pattern: str | None = None
    types: Sequence[str] = ()
    attrs: Sequence[str] = ()


def time_condition(time: TimeFilter) -> tuple[sql.Composable, list[Any]]:
    """GS CIM 009 4.11: before is strictly earlier, after is at or later, between is [timeAt, endTimeAt)."""
    column = TIME_COLUMNS[time.timeproperty]
    if time.timerel == "before":
        return sql.SQL("{} < %s").format(column), [time.time_at]
    if time.timerel == "after":
        return sql.SQL("{} >= %s").format(column), [time.time_at]
    if time.timerel == "between":
        return sql.SQL("{col} >= %s AND {col} < %s").format(col=column), [time.time_at, time.end_time_at]
    return sql.SQL("TRUE"), []


def _attribute_conditions(time: TimeFilter, attrs: Sequence[str]) -> tuple[list[sql.Composable], list[Any]]:
    conditions: list[sql.Composable] = [
        sql.SQL("a.opMode IS DISTINCT FROM 'Delete'"),
        sql.SQL("a.valueType IS NOT NULL"),
    ]
    params: list[Any] = []
    if attrs:
        conditions.append(sql.SQL("a.id = ANY(%s)"))
        params.append(list(attrs))
    condition, time_params = time_condition(time)
    conditions.append(condition)
    params.extend(time_params)
    return conditions, params


class TemporalStore:
    """Reads and writes the TRoE tables of one tenant database, through a connection passed in."""

    def __init__(self) -> None:
        self._timescale: dict[str, bool] = {}

    async def has_timescale(self, conn: AsyncConnection) -> bool:
        database = conn.info.dbname
        known = self._timescale.get(database)
        if known is None:
            cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')")
            row = await cur.fetchone()
            known = bool(row and row[0])
            self._timescale[database] = known
        return known

    # -- entities --------------------------------------------------------------------------------

    async def latest_entity_type(self, conn: AsyncConnection, entity_id: str) -> str | None:
        """The type of the entity's most recent history row; None if it has no history."""
        cur = await conn.execute("SELECT type FROM entities WHERE id = %s ORDER BY ts DESC LIMIT 1", (entity_id,))
        row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def select_entities(
        self, conn: AsyncConnection, where: EntityFilter, time: TimeFilter, *, limit: int, offset: int
    ) -> tuple[list[tuple[str, str]], int]:
        """(id, type) of the entities with history that match, a page of them, and how many match."""
        inner: list[sql.Composable] = []
        params: list[Any] = []
        if where.ids:
            inner.append(sql.SQL("id = ANY(%s)"))
            params.append(list(where.ids))
        if where.id_pattern:
            inner.append(sql.SQL("id ~ %s"))
            params.append(where.id_pattern)
        outer: list[sql.Composable] = []
        if where.types:
            outer.append(sql.SQL("e.type = ANY(%s)"))
            params.append(list(where.types))
        if where.attrs or time.timerel:
            conditions, attr_params = _attribute_conditions(time, where.attrs)
            outer.append(
                sql.SQL("EXISTS (SELECT 1 FROM attributes a WHERE a.entityId = e.id AND {})").format(
                    sql.SQL(" AND ").join(conditions)
                )
            )
            params.extend(attr_params)
        query = sql.SQL(
            "SELECT e.id, e.type, count(*) OVER () FROM ("
            " SELECT DISTINCT ON (id) id, type FROM entities WHERE {inner} ORDER BY id, ts DESC) e"
            " WHERE {outer} ORDER BY e.id LIMIT %s OFFSET %s"
        ).format(
            inner=sql.SQL(" AND ").join(inner) if inner else sql.SQL("TRUE"),
            outer=sql.SQL(" AND ").join(outer) if outer else sql.SQL("TRUE"),
        )
        cur = await conn.execute(query, [*params, limit, offset])
        rows = await cur.fetchall()
        total = int(rows[0][2]) if rows else 0
        if not rows and (offset or not limit):  # past the end, or limit=0 with count=true: count apart
            total = await self._count_entities(conn, query, params)
        return [(str(r[0]), str(r[1])) for r in rows], total

    async def current_entities(
        self, conn: AsyncConnection, conditions: Sequence[sql.Composable], geoproperty: str | None
    ) -> list[tuple[str, Any]]:
        """(id, default instance's GeoJSON of `geoproperty` or None) of current entities meeting `conditions`.

        `conditions` come from `broker.query` and carry their values as `Param`s.
        """
        geometry: sql.Composable = sql.SQL("NULL")
        if geoproperty is not None:
            geometry = sql.SQL("doc -> {} -> 0 -> 'value'").format(Param(geoproperty))
        statement = sql.SQL("SELECT id, {} FROM current_entities WHERE {}").format(
            geometry, sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("TRUE")
        )
        cur = await conn.execute(statement, bound_params(statement))
        return [(str(row[0]), row[1]) for row in await cur.fetchall()]

    async def _count_entities(self, conn: AsyncConnection, query: sql.Composable, params: list[Any]) -> int:
        cur = await conn.execute(sql.SQL("SELECT count(*) FROM ({}) page").format(query), [*params, None, 0])
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- instances -------------------------------------------------------------------------------

    async def attribute_instances(
        self,
        conn: AsyncConnection,
        entity_ids: Sequence[str],
        time: TimeFilter,
        attrs: Sequence[str],
        *,
        last_n: int | None,
        per_attribute_limit: int,
    ) -> list[dict[str, Any]]:
        """The instances of the entities' attributes in time order, at most `per_attribute_limit` + 1 each.

        GS CIM 009 6.3.10: with lastN the most recent N count; otherwise the oldest come first.
        One extra row per attribute tells the caller the range was cut.
        """
        conditions, params = _attribute_conditions(time, attrs)
        column = TIME_COLUMNS[time.timeproperty]
        keep = min(last_n, per_attribute_limit) if last_n else per_attribute_limit
        direction = sql.SQL("DESC") if last_n else sql.SQL("ASC")
        query = sql.SQL(
            "SELECT entity_id, attr, instance_id, value_type, text, boolean, number, compound, unit_code,"
            " dataset_id, sub_properties, to_char(t, {iso}) AS t_text, to_char(observed_at, {iso}) AS observed_at,"
            " to_char(ts, {iso}) AS modified_at, to_char(datetime, {iso}) AS datetime, rn"
            " FROM (SELECT a.entityId AS entity_id, a.id AS attr, a.instanceId AS instance_id,"
            "   a.valueType::text AS value_type, a.text, a.boolean, a.number, a.compound, a.unitCode AS unit_code,"
            "   a.datasetId AS dataset_id, a.subProperties AS sub_properties, {col} AS t,"
            "   a.observedAt AS observed_at, a.ts, a.datetime,"
            "   row_number() OVER (PARTITION BY a.entityId, a.id ORDER BY {col} {dir}, a.ts {dir}) AS rn"
            "  FROM attributes a WHERE a.entityId = ANY(%s) AND {cond}) i"
            " WHERE rn <= %s ORDER BY entity_id, attr, t, ts"
        ).format(
            iso=sql.SQL(ISO_MS),
            col=column,
            dir=direction,
            cond=sql.SQL(" AND ").join(conditions),
        )
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, [list(entity_ids), *params, keep + 1])
            return await cur.fetchall()

    async def sub_attributes(self, conn: AsyncConnection, instance_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The sub-attributes written with the given attribute instances."""
        if not instance_ids:
            return []
        query = sql.SQL(
            "SELECT attrInstanceId AS attr_instance_id, id AS name, valueType::text AS value_type, text,"
            " boolean, number, compound, unitCode AS unit_code, to_char(observedAt, {iso}) AS observed_at,"
            " to_char(datetime, {iso}) AS datetime"
            " FROM subAttributes WHERE attrInstanceId = ANY(%s) ORDER BY ts"
        ).format(iso=sql.SQL(ISO_MS))
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, (list(instance_ids),))
            return await cur.fetchall()

    # -- aggregation -----------------------------------------------------------------------------

    async def aggregate(
        self,
        conn: AsyncConnection,
        entity_ids: Sequence[str],
        time: TimeFilter,
        attrs: Sequence[str],
        methods: Sequence[str],
        period: Period,
    ) -> list[tuple[Any, ...]]:
        """GS CIM 009 4.5.19: `(entity, attribute, *series)` with each method's `[[value, start, end], ...]` as JSON.

        Fixed periods use `time_bucket` (TimescaleDB) or `date_bin`; months and years follow the
        calendar; P0D makes the whole requested interval (or the data's span where open) one period.
        PostgreSQL computes the periods and their values and hands each (entity, attribute) over as
        arrays in binary form; the JSON text is written here (see `series_json`).
        """
        listed = list(dict.fromkeys(attrs))
        conditions, params = _attribute_conditions(time, ())
        column = TIME_COLUMNS[time.timeproperty]
        origin = time.time_at if time.timerel in ("after", "between") and time.time_at else EPOCH
        bucket_params: list[Any] = []
        bucket: sql.Composable
        start, end = sql.SQL("g.bucket"), sql.SQL("g.bucket + %s::interval")
        outer_params: list[Any] = [period.fixed]
        if period.is_zero:
            bucket = sql.SQL("NULL::timestamp")
            start = sql.SQL("coalesce(%s::timestamp, g.first_time)")
            end = sql.SQL("coalesce(%s::timestamp, g.last_time)")
            interval_start, interval_end = _interval_of(time)
            outer_params = [interval_start, interval_end]
        elif period.is_calendar:
            bucket = calendar_bucket(column)
            origin_ym = origin.year * 12 + origin.month
            bucket_params = [origin, origin_ym, origin, origin_ym, period.months, period.months]
            end = sql.SQL("g.bucket + make_interval(months => %s)")
            outer_params = [period.months]
        elif await self.has_timescale(conn):
            bucket = sql.SQL("time_bucket(%s::interval, {col}, %s::timestamp)").format(col=column)
            bucket_params = [period.fixed, origin]
        else:
            bucket = sql.SQL("date_bin(%s::interval, {col}, %s::timestamp)").format(col=column)
            bucket_params = [period.fixed, origin]
        named = sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(sql.SQL(AGGREGATE_SQL[m]), sql.Identifier(f"m{i}"))
            for i, m in enumerate(methods)
        )
        values = sql.SQL(", ").join(
            sql.SQL("array_agg(g.{} ORDER BY g.bucket)").format(sql.Identifier(f"m{i}")) for i in range(len(methods))
        )
        # The periods are grouped one entity (and listed attribute) at a time: a small hash table
        # each, no sort of the instances, the index scanned for exactly the (entity, attribute)
        # pair. Entities and listed attributes are keyed by their position, as hashing and sorting
        # long IRI texts cost more than the aggregates. Formatting timestamps and JSON in SQL
        # (to_char, to_json, string_agg) cost PostgreSQL about four times what grouping does;
        # arrays in binary cost it next to nothing.
        if listed:
            attr_key, sources, inner_attr, inner_match, inner_group = (
                sql.SQL("t.n"),
                sql.SQL(" CROSS JOIN unnest(%s::text[]) WITH ORDINALITY AS t(id, n)"),
                sql.SQL(""), sql.SQL(" AND a.id = t.id"), sql.SQL("1"),
            )  # fmt: skip
        else:
            attr_key, sources, inner_attr, inner_match, inner_group = (
                sql.SQL("g.attr"), sql.SQL(""), sql.SQL('a.id COLLATE "C" AS attr, '), sql.SQL(""), sql.SQL("1, 2"),
            )  # fmt: skip
        query = sql.SQL(
            "SELECT e.n, {attr_key}, array_agg({start} ORDER BY g.bucket), array_agg({end} ORDER BY g.bucket),"
            " {values} FROM unnest(%s::text[]) WITH ORDINALITY AS e(id, n){sources} CROSS JOIN LATERAL ("
            "  SELECT {inner_attr}{bucket} AS bucket, {span}{named}"
            "  FROM attributes a WHERE a.entityId = e.id{inner_match} AND {cond} GROUP BY {inner_group}) g"
            " GROUP BY e.n, {attr_key} ORDER BY e.n, {attr_key}"
        ).format(
            attr_key=attr_key, start=start, end=end, values=values, sources=sources, inner_attr=inner_attr,
            bucket=bucket, inner_match=inner_match, inner_group=inner_group,
            # Only P0D periods reach from the first to the last instance; others need no per-row min/max.
            span=sql.SQL("min({col}) AS first_time, max({col}) AS last_time, ").format(col=column)
            if period.is_zero else sql.SQL(""),
            named=named, cond=sql.SQL(" AND ").join(conditions),
        )  # fmt: skip
        # Periods from an origin on a whole second, of whole seconds, start and end on whole seconds.
        whole_seconds = not period.is_zero and origin.microsecond == 0 and period.fixed.microseconds == 0
        start_params = outer_params[:1] if period.is_zero else []
        end_params = outer_params[1:] if period.is_zero else outer_params
        async with conn.cursor(binary=True) as cur:
            attr_params = [listed] if listed else []
            await cur.execute(
                query, [*start_params, *end_params, list(entity_ids), *attr_params, *bucket_params, *params]
            )
            rows = await cur.fetchall()
        return [
            (entity_ids[n - 1], listed[attr - 1] if listed else attr,
             *(series_json(series, starts, ends, whole_seconds=whole_seconds) for series in values_per_method))
            for n, attr, starts, ends, *values_per_method in rows
        ]  # fmt: skip

    # -- provision -------------------------------------------------------------------------------

    async def write_instances(self, conn: AsyncConnection, rows: HistoryRows, copy: CopyLines | None = None) -> None:
        """Append history rows (the backfill path): `copy`'s lines with one COPY, then `rows`."""
        if copy is not None and copy.lines:
            async with conn.cursor() as cur, cur.copy(f"COPY attributes {ATTRIBUTE_COLUMNS} FROM STDIN") as stream:
                for start in range(0, len(copy.lines), COPY_CHUNK_LINES):
                    await stream.write("".join(copy.lines[start : start + COPY_CHUNK_LINES]))
        rows.given.clear()  # appending keeps what the history holds (the service dropped those): nothing to replace
        await write_history(conn, rows)

    async def update_instance(
        self,
        conn: AsyncConnection,
        entity_id: str,
        attr: str,
        instance_id: str,
        row: tuple[Any, ...],
    ) -> bool:
        """Overwrite one instance's value columns (GS CIM 009 5.6.19); False if there is no such instance.

        `row` is an attribute row as `HistoryRows` builds it; instanceId and ts stay as they were.
        """
        (_, _, _, _, observed_at, sub_properties, unit_code, dataset_id, value_type, text, boolean, number,
         moment, compound, _) = row  # fmt: skip
        cur = await conn.execute(
            "UPDATE attributes SET observedAt = coalesce(%s, observedAt), unitCode = %s, datasetId = %s,"
            " valueType = %s, text = %s, boolean = %s, number = %s, datetime = %s, compound = %s,"
            " subProperties = %s, opMode = 'Update'"
            " WHERE instanceId = %s AND entityId = %s AND id = %s AND opMode IS DISTINCT FROM 'Delete'",
            (observed_at, unit_code, dataset_id, value_type, text, boolean, number, moment, compound,
             sub_properties, instance_id, entity_id, attr),
        )  # fmt: skip
        return cur.rowcount > 0

    async def delete_entity(self, conn: AsyncConnection, entity_id: str) -> bool:
        """Remove an entity's whole history; False if it had none."""
        cur = await conn.execute("DELETE FROM entities WHERE id = %s", (entity_id,))
        deleted = cur.rowcount > 0
        await conn.execute("DELETE FROM subAttributes WHERE entityId = %s", (entity_id,))
        cur = await conn.execute("DELETE FROM attributes WHERE entityId = %s", (entity_id,))
        return deleted or cur.rowcount > 0

    async def delete_attribute(
        self, conn: AsyncConnection, entity_id: str, attr: str, *, dataset_id: str | None, delete_all: bool
    ) -> bool:
        """Remove an attribute's history: the default instances, one datasetId, or all (5.6.17)."""
        if delete_all:
            selector, params = sql.SQL("TRUE"), []
        elif dataset_id is not None:
            selector, params = sql.SQL("datasetId = %s"), [dataset_id]
        else:
            selector, params = sql.SQL("datasetId IS NULL"), []
        cur = await conn.execute(
            sql.SQL(
                "WITH gone AS (DELETE FROM attributes WHERE entityId = %s AND id = %s AND {}"
                " RETURNING instanceId),"
                " subs AS (DELETE FROM subAttributes s USING gone WHERE s.attrInstanceId = gone.instanceId)"
                " SELECT count(*) FROM gone"
            ).format(selector),
            [entity_id, attr, *params],
        )
        row = await cur.fetchone()
        return bool(row and row[0])

    async def delete_instance(self, conn: AsyncConnection, entity_id: str, attr: str, instance_id: str) -> bool:
        """Remove one attribute instance (GS CIM 009 5.6.20); False if there is none."""
        cur = await conn.execute(
            "DELETE FROM attributes WHERE entityId = %s AND id = %s AND instanceId = %s",
            (entity_id, attr, instance_id),
        )
        if cur.rowcount == 0:
            return False
        await conn.execute("DELETE FROM subAttributes WHERE attrInstanceId = %s", (instance_id,))
        return True


_JSON_TIMES = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


def series_json(
    values: Sequence[Any], starts: Sequence[datetime], ends: Sequence[datetime], *, whole_seconds: bool
) -> bytes:
    """GS CIM 009 4.5.19: `[[value, start, end], ...]` as JSON, periods without a value left out.

    orjson writes naive UTC timestamps on a whole second as `2016-01-01T00:00:00Z`; when every
    period starts and ends on one (`whole_seconds`), `.000` is spliced in to give the broker's
    millisecond form (the only strings in the series are timestamps). Non-finite floats become null.
    """
    if not whole_seconds:
        return orjson.dumps(
            [(value, iso_milliseconds(s), iso_milliseconds(e)) for value, s, e in zip(values, starts, ends, strict=True)
             if value is not None]
        )  # fmt: skip
    text = orjson.dumps(
        [(value, s, e) for value, s, e in zip(values, starts, ends, strict=True) if value is not None],
        option=_JSON_TIMES,
    )
    return text.replace(b'Z"', b'.000Z"')


def iso_milliseconds(moment: datetime) -> str:
    """A naive UTC timestamp as the broker writes it: `2016-01-01T00:00:00.000Z`."""
    return moment.isoformat(timespec="milliseconds") + "Z"


def _interval_of(time: TimeFilter) -> tuple[datetime | None, datetime | None]:
    """The requested interval's ends, None where it is open (GS CIM 009 4.11)."""
    if time.timerel == "between":
        return time.time_at, time.end_time_at
    if time.timerel == "after":
        return time.time_at, None
    if time.timerel == "before":
        return None, time.time_at
    return None, None


def calendar_bucket(column: sql.Composable) -> sql.Composable:
    """The start of the n-month period holding `column`, counted from an origin (params: see aggregate).

    Months since the origin, minus one when the day-of-month/time is before the origin's, floored
    to a multiple of n: P1M from 2016-01-01 gives calendar months, P3M quarters, P1Y years.
    """
    months = sql.SQL("(extract(year FROM {c}) * 12 + extract(month FROM {c}))::int - %s").format(c=column)
    whole = sql.SQL(
        "(({m}) - CASE WHEN {c} < %s::timestamp + make_interval(months => ({m2})) THEN 1 ELSE 0 END)"
    ).format(m=months, c=column, m2=months)
    return sql.SQL("(%s::timestamp + make_interval(months => (floor({w}::float8 / %s) * %s)::int))").format(w=whole)
