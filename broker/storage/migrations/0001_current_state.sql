-- Current state of every entity, expanded (docs/internals.md "Stored entity shape").
CREATE TABLE IF NOT EXISTS current_entities (
  id          text PRIMARY KEY,
  types       text[] NOT NULL,
  scope       text[],
  doc         jsonb NOT NULL,
  created_at  timestamptz NOT NULL,
  modified_at timestamptz NOT NULL,
  geo_bbox    box
);
CREATE INDEX IF NOT EXISTS current_entities_types_index ON current_entities USING gin (types);
CREATE INDEX IF NOT EXISTS current_entities_geo_bbox_index ON current_entities USING gist (geo_bbox);
