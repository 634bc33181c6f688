-- Indexes that make broker/query's compiled filters fast on current_entities (docs/internals.md).
-- For broker-core to include in the schema migrations; measured with bench/query_bench.py.

-- type=A,B and (A;B)|C compile to `types && ARRAY[..]` / `types @> ARRAY[..]`.
CREATE INDEX IF NOT EXISTS current_entities_types_index ON current_entities USING gin (types);

-- Geo-queries on `location` pre-filter with `geo_bbox && box(...)`; `near` orders by distance.
CREATE INDEX IF NOT EXISTS current_entities_geo_bbox_index ON current_entities USING gist (geo_bbox);

-- idPattern compiles to `id ~ pattern`; a trigram index would need pg_trgm (not always present),
-- so prefix patterns (`^urn:ngsi-ld:AirQualityObserved:`) use this btree with text_pattern_ops.
CREATE INDEX IF NOT EXISTS current_entities_id_pattern_index ON current_entities (id text_pattern_ops);

-- Attribute existence (q=attr, !attr) and `attrs=` projections: jsonb_path_ops answers `doc ? key`-like
-- containment. Our q compiles to jsonb_path_exists(), which no index serves; the GIN on types plus
-- LIMIT keeps q-queries within budget (see the report of bench/query_bench.py).
