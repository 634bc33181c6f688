-- NGSI-LD subscriptions (GS CIM 009 5.2.12) and their notification outbox (at-least-once delivery).
CREATE TABLE IF NOT EXISTS subscriptions (
  id                   text PRIMARY KEY,
  tenant               text,                  -- NGSILD-Tenant as the creator spelled it (sent back in notifications)
  body                 jsonb NOT NULL,        -- the subscription as the user gave it (compacted terms) plus @context
  is_active            boolean NOT NULL DEFAULT true,
  expires_at           timestamptz,
  time_interval        double precision,
  times_sent           bigint NOT NULL DEFAULT 0,
  times_failed         bigint NOT NULL DEFAULT 0,
  consecutive_failures integer NOT NULL DEFAULT 0,
  last_notification    timestamptz,
  last_success         timestamptz,
  last_failure         timestamptz,
  created_at           timestamptz NOT NULL,
  modified_at          timestamptz NOT NULL
);

-- One row per notification to deliver; inserted in the transaction of the change that caused it.
CREATE TABLE IF NOT EXISTS subscription_outbox (
  seq             bigserial PRIMARY KEY,
  subscription_id text NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
  notification_id text NOT NULL,
  entities        jsonb NOT NULL,           -- expanded entities (stored shape) to notify, in order
  enqueued_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  last_error      text
);
CREATE INDEX IF NOT EXISTS subscription_outbox_lane_index ON subscription_outbox (subscription_id, seq);
