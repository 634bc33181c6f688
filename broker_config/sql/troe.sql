-- History tables shaped like Orion-LD's TRoE (Temporal Representation of Entities).
-- Column names, enum types and value routing follow Orion-LD's TRoE schema so that the same
-- dashboards and history readers work over Orion-LD and over the climaborough broker.
-- Idempotent: safe to run on every start and on an Orion-LD TimescaleDB.
-- Times are UTC, stored as `timestamp` (without time zone) as Orion-LD does.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'valuetype') THEN
    CREATE TYPE ValueType AS ENUM (
      'String', 'Number', 'Boolean', 'Relationship', 'Compound', 'DateTime',
      'GeoPoint', 'GeoPolygon', 'GeoMultiPolygon', 'GeoLineString', 'GeoMultiLineString',
      'LanguageMap');
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'operationmode') THEN
    CREATE TYPE OperationMode AS ENUM ('Create', 'Append', 'Update', 'Replace', 'Delete');
  END IF;
END
$$;

CREATE TABLE IF NOT EXISTS entities (
  instanceId TEXT NOT NULL,
  ts         TIMESTAMP NOT NULL,
  opMode     OperationMode,
  id         TEXT NOT NULL,
  type       TEXT NOT NULL,
  CONSTRAINT entities_pkey PRIMARY KEY (instanceId, ts));

CREATE TABLE IF NOT EXISTS attributes (
  instanceId    TEXT NOT NULL,
  id            TEXT NOT NULL,
  opMode        OperationMode,
  entityId      TEXT NOT NULL,
  observedAt    TIMESTAMP,
  subProperties BOOL,
  unitCode      TEXT,
  datasetId     TEXT,
  valueType     ValueType,
  text          TEXT,
  boolean       BOOL,
  number        FLOAT8,
  datetime      TIMESTAMP,
  compound      JSONB,
  ts            TIMESTAMP NOT NULL,
  CONSTRAINT attributes_pkey PRIMARY KEY (instanceId, ts));

CREATE TABLE IF NOT EXISTS subAttributes (
  instanceId     TEXT NOT NULL,
  id             TEXT NOT NULL,
  entityId       TEXT NOT NULL,
  attrInstanceId TEXT NOT NULL,
  observedAt     TIMESTAMP,
  unitCode       TEXT,
  valueType      ValueType,
  text           TEXT,
  boolean        BOOL,
  number         FLOAT8,
  datetime       TIMESTAMP,
  compound       JSONB,
  ts             TIMESTAMP NOT NULL,
  CONSTRAINT subattributes_pkey PRIMARY KEY (instanceId, ts));

-- Geo columns exist only where PostGIS does; without it geo values go to `compound` as GeoJSON.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'postgis') THEN
    ALTER TABLE attributes ADD COLUMN IF NOT EXISTS geoPoint GEOGRAPHY(POINTZ, 4326);
    ALTER TABLE attributes ADD COLUMN IF NOT EXISTS geoPolygon GEOGRAPHY(POLYGON, 4326);
    ALTER TABLE attributes ADD COLUMN IF NOT EXISTS geoMultiPolygon GEOGRAPHY(MULTIPOLYGON, 4326);
    ALTER TABLE attributes ADD COLUMN IF NOT EXISTS geoLineString GEOGRAPHY(LINESTRING, 4326);
    ALTER TABLE attributes ADD COLUMN IF NOT EXISTS geoMultiLineString GEOGRAPHY(MULTILINESTRING, 4326);
    ALTER TABLE subAttributes ADD COLUMN IF NOT EXISTS geoPoint GEOGRAPHY(POINTZ, 4326);
    ALTER TABLE subAttributes ADD COLUMN IF NOT EXISTS geoPolygon GEOGRAPHY(POLYGON, 4326);
    ALTER TABLE subAttributes ADD COLUMN IF NOT EXISTS geoMultiPolygon GEOGRAPHY(MULTIPOLYGON, 4326);
    ALTER TABLE subAttributes ADD COLUMN IF NOT EXISTS geoLineString GEOGRAPHY(LINESTRING, 4326);
    ALTER TABLE subAttributes ADD COLUMN IF NOT EXISTS geoMultiLineString GEOGRAPHY(MULTILINESTRING, 4326);
  END IF;
END
$$;

CREATE INDEX IF NOT EXISTS entities_id_ts_index ON entities (id, ts);
-- attributes by (entityId, id, time): one covering index in troe_indexes.sql (each btree over
-- long text keys costs every history row a few microseconds of insert time).
CREATE INDEX IF NOT EXISTS subattributes_attrinstanceid_index ON subAttributes (attrInstanceId);

-- Hypertables where TimescaleDB is installed (the FIWARE deployment); plain tables otherwise.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
    PERFORM create_hypertable('entities', 'ts', if_not_exists => TRUE, migrate_data => TRUE);
    PERFORM create_hypertable('attributes', 'ts', if_not_exists => TRUE, migrate_data => TRUE);
    PERFORM create_hypertable('subattributes', 'ts', if_not_exists => TRUE, migrate_data => TRUE);
  END IF;
END
$$;

-- One row per attribute instance for Grafana: entity, type, attribute, time, numeric and text value.
-- `time` is observedAt when the source gave one, else the time of the write.
CREATE OR REPLACE VIEW grafana_attribute_values AS
SELECT a.entityId                    AS entity,
       e.type                        AS type,
       a.id                          AS attribute,
       COALESCE(a.observedAt, a.ts)  AS time,
       a.number                      AS number_value,
       COALESCE(a.text, a.boolean::text, a.datetime::text, a.compound::text) AS text_value
FROM attributes a
LEFT JOIN LATERAL (
  SELECT en.type FROM entities en
  WHERE en.id = a.entityId AND en.ts <= a.ts
  ORDER BY en.ts DESC LIMIT 1) e ON TRUE
WHERE a.opMode IS DISTINCT FROM 'Delete';
