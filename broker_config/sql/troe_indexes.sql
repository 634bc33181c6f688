-- Indexes the temporal API's queries need over the TRoE history tables (broker/temporal/store.py).
-- Idempotent; runs after troe.sql, on our PostgreSQL and on an Orion-LD TimescaleDB alike.

-- Instances of one attribute of one entity in time order, by observedAt (the default temporal
-- property; instances without observedAt count at their write time, like the Grafana view).
-- The one index of `attributes` besides its primary key: every query by entity (temporal reads and
-- aggregation, instance updates and deletes, the twin's bulk read) starts with (entityId, id) or
-- entityId. It carries the columns numeric aggregation reads and filters on (opMode, valueType), so
-- that over a vacuumed history those are index-only scans. Not partial: deletions by entity and
-- attribute and reads that do not say `valueType IS NOT NULL` use it too.
CREATE INDEX IF NOT EXISTS attributes_by_entity_attr_time_index
  ON attributes (entityId, id, (coalesce(observedAt, ts))) INCLUDE (observedAt, ts, number, opMode, valueType);
-- Earlier forms: (entityId, id, ts) of troe.sql and the partial covering index (both served by the above).
DROP INDEX IF EXISTS attributes_entityid_id_ts_index;
DROP INDEX IF EXISTS attributes_entity_attr_time_covering_index;
DROP INDEX IF EXISTS attributes_entityid_id_time_index;
DROP INDEX IF EXISTS attributes_entity_attr_time_index;

-- Entities by type (GET /temporal/entities?type=...), latest row first per id.
CREATE INDEX IF NOT EXISTS entities_type_id_index ON entities (type, id);

-- Changing or deleting one attribute instance (PATCH/DELETE .../{attr}/{instanceId}) names the entity
-- and attribute too and is served by the index above; sub-attributes by attrInstanceId (troe.sql).
