-- User @contexts hosted by the broker (GS CIM 009 5.13); used in the default database only.
CREATE TABLE IF NOT EXISTS user_contexts (
  id          text PRIMARY KEY,
  url         text NOT NULL UNIQUE,
  body        jsonb NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
