"""Times broker/query's compiled SQL over 100,000 synthetic entities in a scratch database; prints JSON.

Usage: python -m bench.query_bench postgresql://user@host:port/scratch_db [--entities 100000] [--runs 50]
The database is emptied and filled: never point it at real data.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import psycopg
from psycopg import sql

from broker.query import (
    bound_params,
    compile_near_condition,
    compile_point_distance,
    compile_q,
    compile_types,
    parse_geo_query,
    parse_q,
    parse_types,
)

REPO = Path(__file__).resolve().parents[1]
SDM = "https://smartdatamodels.org/dataModel.Environment/"
MADRID = (-3.85, 40.30, -3.55, 40.55)


def expand(term: str) -> str:
    return SDM + term


def synthetic_entity(index: int, rng: random.Random) -> tuple[str, list[str], str, tuple[float, float]]:
    kind = "AirQualityObserved" if index % 10 < 7 else "WeatherObserved"
    lon = rng.uniform(MADRID[0], MADRID[2])
    lat = rng.uniform(MADRID[1], MADRID[3])
    stamp = f"2024-03-{1 + index % 28:02d}T{index % 24:02d}:00:00.000Z"

    def measured(value: float, unit: str) -> list[dict[str, object]]:
        return [
            {
                "type": "Property",
                "value": value,
                "unitCode": unit,
                "observedAt": stamp,
                "createdAt": stamp,
                "modifiedAt": stamp,
            }
        ]

    doc: dict[str, object] = {
        "https://uri.etsi.org/ngsi-ld/location": [
            {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}
        ],
        SDM + "dateObserved": [{"type": "Property", "value": {"@type": "DateTime", "@value": stamp}}],
    }
    if kind == "AirQualityObserved":
        doc |= {
            SDM + "no2": measured(round(rng.gammavariate(4, 8), 1), "GQ"),
            SDM + "pm10": measured(round(rng.gammavariate(3, 7), 1), "GQ"),
            SDM + "pm25": measured(round(rng.gammavariate(3, 4), 1), "GQ"),
            SDM + "o3": measured(round(rng.gammavariate(5, 12), 1), "GQ"),
        }
    else:
        doc |= {
            SDM + "temperature": measured(round(rng.gauss(15, 8), 1), "CEL"),
            SDM + "relativeHumidity": measured(round(rng.uniform(0.2, 1), 2), "P1"),
        }
    return f"urn:ngsi-ld:{kind}:madrid:{index:06d}", [SDM + kind], json.dumps(doc), (lon, lat)


def load(connection: psycopg.Connection, count: int) -> None:
    connection.execute("DROP TABLE IF EXISTS current_entities")
    connection.execute((REPO / "broker/storage/migrations/0001_current_state.sql").read_text())
    rng = random.Random(42)
    with (
        connection.cursor() as cursor,
        cursor.copy("COPY current_entities (id, types, doc, created_at, modified_at, geo_bbox) FROM STDIN") as copy,
    ):
        for index in range(count):
            entity_id, types, doc, (lon, lat) = synthetic_entity(index, rng)
            copy.write_row((entity_id, types, doc, "2024-03-01", "2024-03-01", f"(({lon},{lat}),({lon},{lat}))"))
    connection.execute((REPO / "broker/query/indexes.sql").read_text())
    connection.execute("VACUUM ANALYZE current_entities")


def timed(connection: psycopg.Connection, statement: sql.Composed, runs: int) -> dict[str, float | int]:
    params = bound_params(statement)
    rows = 0
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        rows = len(connection.execute(statement, params).fetchall())
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "rows": rows,
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 2),
        "max_ms": round(samples[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("database_url")
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args()
    with psycopg.connect(args.database_url, autocommit=True) as connection:
        if not args.skip_load:
            load(connection, args.entities)
        types = compile_types(parse_types("AirQualityObserved"), expand)
        results: dict[str, object] = {"entities": args.entities}
        for label, q in (
            ("q_no2_gt_40", "no2>40"),
            ("q_no2_gt_120_rare", "no2>120"),
            ("q_observedAt_range", "no2.observedAt==2024-03-05T00:00:00Z..2024-03-06T00:00:00Z"),
        ):
            condition = compile_q(parse_q(q), expand)
            for order in ("", " ORDER BY id"):
                statement = sql.SQL(
                    "SELECT id, doc FROM current_entities WHERE {} AND {}" + order + " LIMIT 100"
                ).format(types, condition)
                results[label + (order.replace(" ", "_").lower() or "_unordered")] = timed(
                    connection, statement, args.runs
                )
            count = sql.SQL("SELECT count(*) FROM current_entities WHERE {} AND {}").format(types, condition)
            results[label + "_count"] = timed(connection, count, max(5, args.runs // 10))
        for metres in (500, 2000, 10000):
            query = parse_geo_query(f"near;maxDistance=={metres}", "Point", "[-3.7038, 40.4168]")
            near, order_by = compile_near_condition(query), compile_point_distance(query)
            assert near is not None and order_by is not None
            statement = sql.SQL("SELECT id, doc FROM current_entities WHERE {} AND {} ORDER BY {} LIMIT 100").format(
                types, near, order_by
            )
            results[f"near_{metres}m_ordered_limit_100"] = timed(connection, statement, args.runs)
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
