-- Context source registrations (GS CIM 009 5.9, 5.2.9), stored expanded; owned by broker/csource.
CREATE TABLE IF NOT EXISTS csource_registrations (
  id           text PRIMARY KEY,
  doc          jsonb NOT NULL,                -- the registration, types and attribute names expanded
  entity_types text[] NOT NULL DEFAULT '{}',  -- expanded types of information[].entities[]
  attributes   text[] NOT NULL DEFAULT '{}',  -- expanded propertyNames and relationshipNames
  created_at   timestamptz NOT NULL,
  modified_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS csource_registrations_entity_types_index
  ON csource_registrations USING gin (entity_types);
CREATE INDEX IF NOT EXISTS csource_registrations_attributes_index
  ON csource_registrations USING gin (attributes);
