-- Indexes the temporal API's queries need over the TRoE history tables (broker/temporal/store.py).
-- Idempotent; runs after troe.sql, on our PostgreSQL and on an Orion-LD TimescaleDB alike.

-- Instances of one attribute of one entity in time order, by observedAt (the default temporal
-- property; instances without observedAt count at their write time, like the Grafana view).
CREATE INDEX IF NOT EXISTS attributes_entityid_id_time_index
  ON attributes (entityId, id, (coalesce(observedAt, ts)));

-- Entities by type (GET /temporal/entities?type=...), latest row first per id.
CREATE INDEX IF NOT EXISTS entities_type_id_index ON entities (type, id);

-- Deleting or reading one attribute instance by its instanceId (PATCH/DELETE .../{instanceId})
-- is served by the primary key (instanceId, ts); sub-attributes by attrInstanceId (troe.sql).
