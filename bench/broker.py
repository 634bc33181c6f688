"""Speed of the embedded NGSI-LD broker (issue 2 "Speed"): writes, queries and memory, printed as one JSON line.

Run: `python -m bench.broker` (about 3-8 minutes). A quick look at the write path alone:
`python -m bench.broker --entities 5000 --seconds 15 --no-queries` (under a minute; its rates are not
the issue's, which asks for 100,000 entities, but its CPU per request and entity compare).

Everything runs on this machine over 127.0.0.1: an embedded PostgreSQL (the broker's own
`DEV_SETTINGS`: fsync on, default synchronous_commit) and the broker as a subprocess
(`python -m cli.main broker`, one uvicorn worker), history on.

The data are 12-attribute AirQualityObserved entities in normalized form with the Smart Data
Models Environment @context (Link header): pm25, pm10, no2, o3, so2, co, temperature,
relativeHumidity, windSpeed, windDirection, atmosphericPressure, precipitation, each with
`unitCode` and `observedAt`, plus `location` (GeoJSON Point in a 40 km x 30 km city) and
`dateObserved`, i.e. 14 attributes per entity.

Phases and keys of the JSON line:

- `batch_upsert_entities_per_s`: `N_ENTITIES` new entities sent as `POST /entityOperations/upsert`
  in batches of `BATCH_SIZE`, one request after the other on one connection, in slices of
  `SLICE_ENTITIES`; entities / wall time of all requests. This also loads the data set for the
  query phase.
- `copy_rows_per_s`: after each slice, the broker's own rows of that slice's entities (current
  state rows from `current_entities`, history rows from `entities`, `attributes` and
  `subAttributes`), read back as Python tuples and written with psycopg `COPY ... FROM STDIN`
  (`write_row`, text format) into scratch tables
  created `LIKE <table> INCLUDING ALL` (same columns, keys and indexes) in the same database, one
  transaction, one connection; rows / wall time of the COPYs and the commit; the median over slices.
  (Formatting rows in Python is not what limits it: the same rows sent as the bytes of a
  `COPY ... TO STDOUT` went no faster, 48,000-51,000 rows/s, with 0.2 s of client CPU for 320,000 rows.)
- `batch_vs_copy_ratio`: per slice, its batch rate / (COPY rate / `rows_per_entity`), where
  `rows_per_entity` = (rows the slice added to current_entities + entities + attributes +
  subAttributes) / entities it added; the median over slices (each under `details.slices`). In words:
  the broker's entity throughput as a share of the throughput at which raw COPY stores the same rows
  for the same entities, measured right after it: this machine's speed drifts up to 2x within
  minutes, and one COPY seconds long set against a batch phase a minute long once gave 0.37; the
  sliced runs after it gave medians of 0.50-0.58 (single slices 0.41-0.69). Target ≥ 0.5.
- `batch_upsert_existing_entities_per_s` (detail): the same batches with new observations for
  entities that exist, `?options=update` (how an IoT agent feeds the broker).
- `single_upsert_rps`: 16 concurrent clients, each sending `POST /entityOperations/upsert?options=update`
  with one entity (new observation of a random existing station) as soon as the previous answer
  arrived, for `SINGLE_UPSERT_SECONDS` after a warm-up; 2xx answers / seconds. The clients run in
  a separate process on raw keep-alive HTTP/1.1 connections (bench/_harness.py); its CPU share is
  reported so one can see it was not the bottleneck. `details.single_upsert.writes_per_transaction`: how many
  of these writes the broker's group commit put into one transaction, on average; `ms_per_write`: how long
  a write waited for its group (`queued`), for a connection, BEGIN and its locks (`locking`), for its
  group's states and history (`writing`) and COMMIT (`committing`), on average.
- `query_q_p95_ms`: `GET /entities?type=AirQualityObserved&q=pm25>X&limit=100` with X random in
  the value range, one request at a time, p95 of the wall time per request (client included).
- `query_near_p95_ms`: `GET /entities?type=AirQualityObserved&georel=near;maxDistance==1000&geometry=Point
  &coordinates=[lon,lat]&limit=100` at random points of the city, p95.
- `get_by_id_p50_ms`: `GET /entities/{id}` of random existing entities, p50.
- `details.cpu_per_request`, `details.batch_cpu_us_per_entity`, `details.single_upsert.*cpu*`: CPU
  time the broker process and PostgreSQL (all backends) spent per request or entity. Unlike wall
  times they hardly depend on what else the machine runs; `machine.loadavg_*` says how busy it was.
- `details.python_loop_ms` (before the batch and the single-upsert phases) and `machine.python_loop_ms`
  (at the end): how long a fixed piece of pure Python took (bench/_harness.py `python_loop_ms`), a
  snapshot of this host's speed, which flips between two levels (about 26 and 43-53 ms here) within
  seconds to minutes; the CPU per request or entity above says how the phase itself went.
- `broker_rss_mb`: resident memory of the broker process (VmRSS) after all of the above, with
  the `N_ENTITIES` entities loaded; `broker_peak_rss_mb` (detail) is its high-water mark.

When the batch phase runs out of its time budget (`LOAD_BUDGET_S`, a slow or busy machine), the
rest of the `N_ENTITIES` is cloned in SQL (`details.entities_topped_up_by_sql`) so that the queries
still run over the full data set; the write rates above only count what the broker did.

A metric whose requests failed is `null`, with the first failure under `errors`. `machine` gives
cores and CPU model. Progress goes to stderr; stdout gets exactly one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import psycopg
from psycopg import sql

from bench._harness import (
    BrokerUnderTest,
    HttpConnection,
    cpu_seconds,
    emit_result,
    log,
    machine_info,
    peak_rss_mb,
    percentile,
    process_tree_cpu_seconds,
    python_loop_ms,
    rss_mb,
    running_broker,
)

N_ENTITIES = 100_000
BATCH_SIZE = 500
UPDATE_BATCHES = 10
SLICE_ENTITIES = 20_000
SINGLE_UPSERT_CLIENTS = 16
SINGLE_UPSERT_WARMUP_S = 3.0
SINGLE_UPSERT_SECONDS = 20.0
QUERIES = True  # --no-queries: stop after the single-upsert phase
QUERY_REPETITIONS = 300
GET_REPETITIONS = 1000
LOAD_BUDGET_S = 240.0
UPDATE_BUDGET_S = 60.0
QUERY_BUDGET_S = 60.0
SEED = 20_260_525

API = "/ngsi-ld/v1"
SDM_ENVIRONMENT_CONTEXT = "https://smart-data-models.github.io/dataModel.Environment/context.jsonld"
LINK = f'<{SDM_ENVIRONMENT_CONTEXT}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
WRITE_HEADERS = {"Content-Type": "application/json", "Link": LINK}
READ_HEADERS = {"Accept": "application/json", "Link": LINK}
# A 40 km x 30 km city (around Paris), where `near;maxDistance==1000` finds a few hundred stations.
CITY = (2.05, 48.70, 2.60, 48.97)

# name, unitCode, low, high
MEASURES: tuple[tuple[str, str, float, float], ...] = (
    ("pm25", "GQ", 0.0, 150.0),
    ("pm10", "GQ", 0.0, 250.0),
    ("no2", "GQ", 0.0, 200.0),
    ("o3", "GQ", 0.0, 180.0),
    ("so2", "GQ", 0.0, 60.0),
    ("co", "GP", 0.0, 5.0),
    ("temperature", "CEL", -10.0, 38.0),
    ("relativeHumidity", "P1", 10.0, 100.0),
    ("windSpeed", "MTS", 0.0, 25.0),
    ("windDirection", "DD", 0.0, 360.0),
    ("atmosphericPressure", "A97", 980.0, 1040.0),
    ("precipitation", "MMT", 0.0, 20.0),
)
HISTORY_TABLES = ("entities", "attributes", "subAttributes")


def entity_id(index: int) -> str:
    return f"urn:ngsi-ld:AirQualityObserved:bench:{index:06d}"


def station_point(index: int) -> list[float]:
    """A fixed, pseudo-random position for station `index` inside CITY."""
    rng = random.Random(index * 7919 + 17)
    return [round(rng.uniform(CITY[0], CITY[2]), 6), round(rng.uniform(CITY[1], CITY[3]), 6)]


def observation(index: int, at: datetime, rng: random.Random, *, with_location: bool = True) -> dict[str, Any]:
    """One AirQualityObserved entity in normalized form (SDM Environment terms)."""
    observed = at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    entity: dict[str, Any] = {"id": entity_id(index), "type": "AirQualityObserved"}
    entity["dateObserved"] = {"type": "Property", "value": {"@type": "DateTime", "@value": observed}}
    if with_location:
        entity["location"] = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": station_point(index)}}
    for name, unit, low, high in MEASURES:
        entity[name] = {"type": "Property", "value": round(rng.uniform(low, high), 2), "unitCode": unit,
                        "observedAt": observed}
    return entity


# ---- writes ------------------------------------------------------------------------------------


async def send_batches(broker: BrokerUnderTest, first: int, count: int, *, at: datetime, options: str | None,
                       budget_s: float, errors: dict[str, str]) -> tuple[int, float]:
    """Upsert entities first..first+count-1 in BATCH_SIZE batches on one connection: (entities stored, seconds)."""
    rng = random.Random(SEED + first)
    target = f"{API}/entityOperations/upsert" + (f"?options={options}" if options else "")
    connection = await HttpConnection(broker.host, broker.port).open()
    stored = 0
    elapsed = 0.0
    try:
        for start in range(first, first + count, BATCH_SIZE):
            indexes = range(start, min(start + BATCH_SIZE, first + count))
            body = orjson.dumps([observation(i, at, rng) for i in indexes])
            began = time.perf_counter()
            status, answer = await connection.request("POST", target, body, WRITE_HEADERS)
            elapsed += time.perf_counter() - began
            if status in (201, 204):
                stored += len(indexes)
            else:
                errors.setdefault(f"batch_upsert{'_' + options if options else ''}",
                                  f"HTTP {status}: {answer[:600].decode(errors='replace')}")
                if status >= 500 or (status == 207 and stored == 0):
                    break
            if elapsed > budget_s:
                log(f"batch phase over its {budget_s:.0f}s budget after {stored} entities")
                break
            if (start - first) % (BATCH_SIZE * 40) == 0:
                log(f"  {start - first + len(indexes)} / {count} entities, {stored / max(elapsed, 1e-9):.0f}/s")
    finally:
        await connection.close()
    return stored, elapsed


def table_counts(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        counts = {}
        for table in ("current_entities", *HISTORY_TABLES):
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.lower()))).fetchone()
            counts[table] = int(row[0]) if row else 0
        return counts


def copy_same_rows(database_url: str, ids: list[str]) -> dict[str, Any]:
    """COPY the broker's rows of the entities `ids` into scratch tables of the same shape."""
    with psycopg.connect(database_url) as conn:
        rows: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
        # jsonb comes back as its text form: COPY gets the same text the server would have to parse anyway.
        current_columns = ["id", "types", "scope", "doc", "created_at", "modified_at", "geo_bbox"]
        rows["current_entities"] = (current_columns, conn.execute(
            "SELECT id, types, scope, doc::text, created_at, modified_at, geo_bbox::text"
            " FROM current_entities WHERE id = ANY(%s)", (ids,)).fetchall())
        for table, key in (("entities", "id"), ("attributes", "entityId"), ("subattributes", "entityId")):
            columns = [row[0] for row in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position", (table,)).fetchall()]
            created = sql.SQL(" AND opMode = 'Create'" if "opmode" in columns else "")
            select = sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s){}").format(
                sql.SQL(", ").join(
                    sql.SQL("{}::text").format(sql.Identifier(c)) if c == "compound" else sql.Identifier(c)
                    for c in columns),
                sql.Identifier(table), sql.Identifier(key.lower()), created)
            rows[table] = (columns, conn.execute(select, (ids,)).fetchall())
        for table in rows:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(f"bench_copy_{table}")))
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                sql.Identifier(f"bench_copy_{table}"), sql.Identifier(table)))
        conn.commit()
        total = sum(len(data) for _, data in rows.values())
        began = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            for table, (columns, data) in rows.items():
                statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier(f"bench_copy_{table}"), sql.SQL(", ").join(map(sql.Identifier, columns)))
                with cur.copy(statement) as copy:
                    for row in data:
                        copy.write_row(row)
        seconds = time.perf_counter() - began
        for table in rows:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(f"bench_copy_{table}")))
        conn.commit()
    return {"rows": total, "entities": len(ids), "seconds": seconds,
            "rows_by_table": {table: len(data) for table, (_, data) in rows.items()}}


def single_upsert_load(host: str, port: int, n_entities: int, clients: int, warmup_s: float,
                       duration_s: float) -> dict[str, Any]:
    """Load generator (runs in its own process): `clients` closed-loop single-entity upserts."""
    return asyncio.run(_single_upsert_load(host, port, n_entities, clients, warmup_s, duration_s))


async def _single_upsert_load(host: str, port: int, n_entities: int, clients: int, warmup_s: float,
                              duration_s: float) -> dict[str, Any]:
    rng = random.Random(SEED + 1)
    at = datetime(2026, 1, 2, tzinfo=UTC)
    bodies = [orjson.dumps([observation(rng.randrange(n_entities), at + timedelta(minutes=k), rng,
                                        with_location=False)]) for k in range(4000)]
    target = f"{API}/entityOperations/upsert?options=update"
    counted = {"ok": 0, "failed": 0}
    latencies: list[float] = []
    first_error: list[str] = []
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    cpu_at_measure: list[float] = []

    async def client(number: int) -> None:
        connection = await HttpConnection(host, port).open()
        k = number
        try:
            while True:
                began = time.perf_counter()
                if began >= stop_at:
                    return
                status, answer = await connection.request("POST", target, bodies[k % len(bodies)], WRITE_HEADERS)
                k += clients
                done = time.perf_counter()
                if began >= measure_from and done <= stop_at:
                    if 200 <= status < 300:
                        counted["ok"] += 1
                        latencies.append(done - began)
                    else:
                        counted["failed"] += 1
                        if not first_error:
                            first_error.append(f"HTTP {status}: {answer[:600].decode(errors='replace')}")
        finally:
            await connection.close()

    async def mark_measure_start() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu_at_measure.append(time.process_time())

    await asyncio.gather(mark_measure_start(), *(client(n) for n in range(clients)))
    cpu = time.process_time() - (cpu_at_measure[0] if cpu_at_measure else 0.0)
    return {"ok": counted["ok"], "failed": counted["failed"], "seconds": duration_s,
            "p50_ms": percentile(latencies, 0.5) * 1000 if latencies else None,
            "p95_ms": percentile(latencies, 0.95) * 1000 if latencies else None,
            "loadgen_cpu_share": round(cpu / duration_s, 3), "error": first_error[0] if first_error else None}


# ---- reads -------------------------------------------------------------------------------------


async def latencies_ms(broker: BrokerUnderTest, targets: list[str], name: str, errors: dict[str, str]
                       ) -> list[float]:
    """Wall time of each GET, one at a time on one keep-alive connection, after 20 warm-up requests.

    Stops after QUERY_BUDGET_S once 50 requests are measured, so that a slow query cannot stretch the run.
    """
    connection = await HttpConnection(broker.host, broker.port).open()
    measured: list[float] = []
    stop_at = time.monotonic() + QUERY_BUDGET_S
    try:
        for number, target in enumerate(targets[:20] + targets):
            began = time.perf_counter()
            status, answer = await connection.request("GET", target, None, READ_HEADERS)
            spent = (time.perf_counter() - began) * 1000
            if status != 200:
                errors.setdefault(name, f"GET {target} -> HTTP {status}: {answer[:600].decode(errors='replace')}")
                if status >= 400:
                    return []
            elif number >= 20:
                measured.append(spent)
            if len(measured) >= 50 and time.monotonic() > stop_at:
                log(f"  {name}: stopped after {len(measured)} requests ({QUERY_BUDGET_S:.0f}s budget)")
                break
    finally:
        await connection.close()
    return measured


def top_up_by_sql(database_url: str, loaded: int, wanted: int) -> int:
    """Clone stored entities in SQL (new ids and positions) until `wanted` exist; how many were added.

    Only used when the batch phase hit its time budget on a slow or busy machine, so that the
    query phase still runs over `wanted` entities. History is not cloned (queries do not read it).
    """
    missing = wanted - loaded
    if missing <= 0 or loaded == 0:
        return 0
    with psycopg.connect(database_url) as conn:
        conn.execute(
            """
            INSERT INTO current_entities (id, types, scope, doc, created_at, modified_at, geo_bbox)
            SELECT format('urn:ngsi-ld:AirQualityObserved:bench:%%s', lpad(n::text, 6, '0')),
                   source.types, source.scope,
                   jsonb_set(source.doc, ARRAY[%(location)s, '0', 'value', 'coordinates'],
                             jsonb_build_array(point.lon, point.lat)),
                   source.created_at, source.modified_at, box(point(point.lon, point.lat), point(point.lon, point.lat))
            FROM generate_series(%(first)s::int, %(last)s::int) AS n
            CROSS JOIN LATERAL (SELECT round((%(west)s + random() * %(width)s)::numeric, 6)::float8 AS lon,
                                       round((%(south)s + random() * %(height)s)::numeric, 6)::float8 AS lat
                                WHERE n IS NOT NULL) AS point
            JOIN current_entities AS source
              ON source.id = format('urn:ngsi-ld:AirQualityObserved:bench:%%s',
                                    lpad((n %% %(loaded)s::int)::text, 6, '0'))
            ON CONFLICT (id) DO NOTHING
            """,
            {"location": "https://uri.etsi.org/ngsi-ld/location", "first": loaded, "last": wanted - 1,
             "loaded": loaded, "west": CITY[0], "width": CITY[2] - CITY[0], "south": CITY[1],
             "height": CITY[3] - CITY[1]},
        )
        conn.execute("ANALYZE current_entities")
        row = conn.execute("SELECT count(*) FROM current_entities").fetchone()
    return (int(row[0]) if row else 0) - loaded


def q_targets(rng: random.Random) -> list[str]:
    return [f"{API}/entities?type=AirQualityObserved&q={quote(f'pm25>{rng.uniform(5, 145):.1f}')}&limit=100"
            for _ in range(QUERY_REPETITIONS)]


def near_targets(rng: random.Random) -> list[str]:
    targets = []
    for _ in range(QUERY_REPETITIONS):
        point = f"[{rng.uniform(CITY[0], CITY[2]):.5f},{rng.uniform(CITY[1], CITY[3]):.5f}]"
        targets.append(f"{API}/entities?type=AirQualityObserved&georel={quote('near;maxDistance==1000')}"
                       f"&geometry=Point&coordinates={quote(point)}&limit=100")
    return targets


def get_targets(rng: random.Random, n_entities: int) -> list[str]:
    return [f"{API}/entities/{quote(entity_id(rng.randrange(n_entities)), safe=':')}" for _ in range(GET_REPETITIONS)]


def write_groups(broker: BrokerUnderTest) -> dict[str, Any]:
    """The broker's group-commit counters (GET /health): transactions of single-entity writes, writes in
    them, seconds the writes spent in each stage."""
    health = httpx.get(f"{broker.base_url}/health", timeout=10).json()
    return health.get("write_groups") or {"groups": 0, "writes": 0, "seconds": {}}


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# ---- the run -----------------------------------------------------------------------------------


async def measure(broker: BrokerUnderTest, result: dict[str, Any], details: dict[str, Any],
                  errors: dict[str, str]) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    details["python_loop_ms"] = {"batch": python_loop_ms()}
    log(f"batch upsert of {N_ENTITIES} new entities in batches of {BATCH_SIZE}, slices of {SLICE_ENTITIES},"
        f" each followed by a raw COPY of its rows")
    stored = 0
    seconds = 0.0
    spent_broker = spent_pg = 0.0  # during the batches only, not the COPYs between them
    slices: list[dict[str, Any]] = []
    added: dict[str, int] = {}
    for first in range(0, N_ENTITIES, SLICE_ENTITIES):
        count = min(SLICE_ENTITIES, N_ENTITIES - first)
        counts_before = table_counts(broker.database_url)
        cpu_broker, cpu_pg = cpu_seconds(broker.pid), process_tree_cpu_seconds(broker.postgres_pid)
        sliced, sliced_s = await send_batches(broker, first, count, at=at, options=None,
                                              budget_s=LOAD_BUDGET_S - seconds, errors=errors)
        spent_broker += cpu_seconds(broker.pid) - cpu_broker
        spent_pg += process_tree_cpu_seconds(broker.postgres_pid) - cpu_pg
        stored += sliced
        seconds += sliced_s
        counts_after = table_counts(broker.database_url)
        for table in counts_after:
            added[table] = added.get(table, 0) + counts_after[table] - counts_before[table]
        rows_per_entity = sum(counts_after[t] - counts_before[t] for t in counts_after) / sliced if sliced else 0.0
        if sliced:
            copied = copy_same_rows(broker.database_url, [entity_id(i) for i in range(first, first + sliced)])
            copy_rate = copied["rows"] / copied["seconds"]
            slices.append({"entities": sliced, "batch_entities_per_s": round(sliced / sliced_s),
                           "copy_rows_per_s": round(copy_rate), "rows_per_entity": round(rows_per_entity, 2),
                           "ratio": round(sliced / sliced_s / (copy_rate / rows_per_entity), 3)})
            log(f"  slice {len(slices)}: batch {sliced / sliced_s:.0f} entities/s, COPY {copy_rate:.0f} rows/s,"
                f" ratio {slices[-1]['ratio']}")
        if sliced < count or seconds >= LOAD_BUDGET_S:
            break
    details["batch_cpu_s"] = {"broker": round(spent_broker, 1), "postgres": round(spent_pg, 1),
                              "wall": round(seconds, 1)}
    if stored:
        # CPU per entity does not depend on how busy the shared machine is; 1e6 / broker µs is the rate
        # one uncontended core running the broker could reach.
        details["batch_cpu_us_per_entity"] = {"broker": round(spent_broker / stored * 1e6),
                                              "postgres": round(spent_pg / stored * 1e6)}
    n_loaded = stored
    details["entities_loaded"] = n_loaded
    result["batch_upsert_entities_per_s"] = rounded(stored / seconds if stored else None, 0)
    new_entities = added.get("current_entities", 0)
    details["rows_per_entity"] = rounded(sum(added.values()) / new_entities if new_entities else None, 2)
    details["rows_added"] = added
    if slices:
        # This machine's speed drifts by up to 2x within minutes, so each slice is compared with the COPY
        # that ran right after it; the ratio is the median over slices (all of them under details.slices).
        result["copy_rows_per_s"] = round(statistics.median(piece["copy_rows_per_s"] for piece in slices))
        result["batch_vs_copy_ratio"] = round(statistics.median(piece["ratio"] for piece in slices), 3)
        details["slices"] = slices

    if n_loaded:
        log(f"batch upsert (options=update) of {UPDATE_BATCHES * BATCH_SIZE} existing entities")
        updated, seconds = await send_batches(broker, 0, min(UPDATE_BATCHES * BATCH_SIZE, n_loaded),
                                              at=at + timedelta(hours=1), options="update", budget_s=UPDATE_BUDGET_S,
                                              errors=errors)
        details["batch_upsert_existing_entities_per_s"] = round(updated / seconds) if updated else None

        details["python_loop_ms"]["single_upsert"] = python_loop_ms()
        log(f"single-entity upserts, {SINGLE_UPSERT_CLIENTS} clients, {SINGLE_UPSERT_SECONDS:.0f}s")
        cpu_broker, cpu_pg = cpu_seconds(broker.pid), process_tree_cpu_seconds(broker.postgres_pid)
        groups_before = write_groups(broker)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            load = await asyncio.wrap_future(pool.submit(
                single_upsert_load, broker.host, broker.port, n_loaded, SINGLE_UPSERT_CLIENTS,
                SINGLE_UPSERT_WARMUP_S, SINGLE_UPSERT_SECONDS))
        wall = SINGLE_UPSERT_WARMUP_S + SINGLE_UPSERT_SECONDS
        requests_done = max(1, round(load["ok"] * wall / load["seconds"]))  # warm-up included, approximately
        details["single_upsert"] = {
            "broker_cpu_ms_per_request": round((cpu_seconds(broker.pid) - cpu_broker) / requests_done * 1000, 2),
            "postgres_cpu_ms_per_request": round(
                (process_tree_cpu_seconds(broker.postgres_pid) - cpu_pg) / requests_done * 1000, 2),
            "p50_ms": rounded(load["p50_ms"], 2), "p95_ms": rounded(load["p95_ms"], 2), "failed": load["failed"],
            "loadgen_cpu_share": load["loadgen_cpu_share"],
            "broker_cpu_share": round((cpu_seconds(broker.pid) - cpu_broker) / wall, 3),
            "postgres_cpu_share": round((process_tree_cpu_seconds(broker.postgres_pid) - cpu_pg) / wall, 3),
        }
        groups_after = write_groups(broker)
        groups = groups_after["groups"] - groups_before["groups"]
        if groups:
            writes = groups_after["writes"] - groups_before["writes"]
            details["single_upsert"]["writes_per_transaction"] = round(writes / groups, 2)
            # Where a write's time goes inside the broker (the rest of p50: HTTP, parsing, answering).
            details["single_upsert"]["ms_per_write"] = {
                stage: round((seconds - groups_before["seconds"].get(stage, 0.0)) / writes * 1000, 2)
                for stage, seconds in groups_after["seconds"].items()}  # fmt: skip
        if load["error"]:
            errors["single_upsert"] = load["error"]
        result["single_upsert_rps"] = round(load["ok"] / load["seconds"]) if load["ok"] else None

        if n_loaded < N_ENTITIES:
            log(f"topping up {n_loaded} -> {N_ENTITIES} entities by SQL for the query phase")
            details["entities_topped_up_by_sql"] = top_up_by_sql(broker.database_url, n_loaded, N_ENTITIES)
            n_loaded += details["entities_topped_up_by_sql"]
        if not QUERIES:
            return
        rng = random.Random(SEED + 2)
        log("queries: type + q, near, GET by id")
        cpu_per_request: dict[str, dict[str, float]] = {}

        async def timed(name: str, targets: list[str]) -> list[float]:
            before = cpu_seconds(broker.pid), process_tree_cpu_seconds(broker.postgres_pid)
            measured = await latencies_ms(broker, targets, name, errors)
            if measured:
                # Warm-up requests included in the CPU but not in the count: a slight overestimate.
                cpu_per_request[name] = {
                    "broker_ms": round((cpu_seconds(broker.pid) - before[0]) / len(measured) * 1000, 2),
                    "postgres_ms": round((process_tree_cpu_seconds(broker.postgres_pid) - before[1])
                                         / len(measured) * 1000, 2)}
            return measured

        q_ms = await timed("query_q", q_targets(rng))
        near_ms = await timed("query_near", near_targets(rng))
        get_ms = await timed("get_by_id", get_targets(rng, n_loaded))
        details["cpu_per_request"] = cpu_per_request
        result["query_q_p95_ms"] = rounded(percentile(q_ms, 0.95)) if q_ms else None
        result["query_near_p95_ms"] = rounded(percentile(near_ms, 0.95)) if near_ms else None
        result["get_by_id_p50_ms"] = rounded(percentile(get_ms, 0.5), 2) if get_ms else None
        details["query_q_p50_ms"] = rounded(percentile(q_ms, 0.5)) if q_ms else None
        details["query_near_p50_ms"] = rounded(percentile(near_ms, 0.5)) if near_ms else None
        details["get_by_id_p95_ms"] = rounded(percentile(get_ms, 0.95), 2) if get_ms else None

    result["broker_rss_mb"] = rss_mb(broker.pid)
    details["broker_peak_rss_mb"] = peak_rss_mb(broker.pid)


def main() -> None:
    global N_ENTITIES, SINGLE_UPSERT_SECONDS, SINGLE_UPSERT_CLIENTS, QUERIES
    parser = argparse.ArgumentParser(description="Speed of the embedded NGSI-LD broker; one JSON line on stdout.")
    parser.add_argument("--entities", type=int, default=N_ENTITIES, help="entities to load (default 100000)")
    parser.add_argument("--seconds", type=float, default=SINGLE_UPSERT_SECONDS,
                        help="measured seconds of the single-upsert phase (default 20)")
    parser.add_argument("--clients", type=int, default=SINGLE_UPSERT_CLIENTS,
                        help="concurrent clients of the single-upsert phase (default 16, the issue's figure)")
    parser.add_argument("--no-queries", action="store_true",
                        help="stop after the single-upsert phase (a quick look at the write path)")
    arguments = parser.parse_args()
    QUERIES = not arguments.no_queries
    N_ENTITIES = arguments.entities
    SINGLE_UPSERT_SECONDS = arguments.seconds
    SINGLE_UPSERT_CLIENTS = arguments.clients
    began = time.monotonic()
    load_at_start = round(os.getloadavg()[0], 2)
    result: dict[str, Any] = dict.fromkeys((
        "batch_upsert_entities_per_s", "copy_rows_per_s", "batch_vs_copy_ratio", "single_upsert_rps",
        "query_q_p95_ms", "query_near_p95_ms", "get_by_id_p50_ms", "broker_rss_mb"))
    details: dict[str, Any] = {"entities": N_ENTITIES, "batch_size": BATCH_SIZE, "attributes_per_entity": 14,
                               "clients": SINGLE_UPSERT_CLIENTS}
    errors: dict[str, str] = {}
    # Batches of 500 such entities are ~0.9 MB; the default 1 MiB request limit would be too tight.
    with running_broker(extra_env={"CLIMABOROUGH_MAX_PAYLOAD_BYTES": str(16 * 1024 * 1024)}) as broker:
        log(f"broker {broker.base_url} pid={broker.pid}, postgres pid={broker.postgres_pid}")
        try:
            asyncio.run(measure(broker, result, details, errors))
        except Exception as error:  # a broken phase still yields the JSON line with what was measured
            errors["run"] = f"{type(error).__name__}: {error}"
            log(f"run failed: {errors['run']}; broker log tail:\n{broker.log_path.read_text()[-3000:]}")
    details["run_seconds"] = round(time.monotonic() - began, 1)
    details["loadavg_1m_at_start"] = load_at_start
    emit_result({**result, "machine": machine_info(), "details": details, "errors": errors})


if __name__ == "__main__":
    main()
