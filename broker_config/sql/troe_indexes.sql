-- Indexes the temporal API's queries need over the TRoE history tables (broker/temporal/store.py).
-- Idempotent; runs after troe.sql, on our PostgreSQL and on an Orion-LD TimescaleDB alike.

-- Instances of one attribute of one entity in time order, by observedAt (the default temporal
-- property; instances without observedAt count at their write time, like the Grafana view).
-- Partial on what the temporal queries read (no deletion markers) and carrying the columns numeric
-- aggregation reads, so that over a vacuumed history it is an index-only scan.
CREATE INDEX IF NOT EXISTS attributes_entity_attr_time_covering_index
  ON attributes (entityId, id, (coalesce(observedAt, ts))) INCLUDE (observedAt, ts, number)
  WHERE valueType IS NOT NULL AND opMode IS DISTINCT FROM 'Delete';
DROP INDEX IF EXISTS attributes_entityid_id_time_index;  -- earlier, non-covering forms
DROP INDEX IF EXISTS attributes_entity_attr_time_index;

-- Entities by type (GET /temporal/entities?type=...), latest row first per id.
CREATE INDEX IF NOT EXISTS entities_type_id_index ON entities (type, id);

-- Deleting or reading one attribute instance by its instanceId (PATCH/DELETE .../{instanceId})
-- is served by the primary key (instanceId, ts); sub-attributes by attrInstanceId (troe.sql).
