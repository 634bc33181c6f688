-- GS CIM 009 5.13: a stored @context is Hosted (added by a client) or ImplicitlyCreated (the inline
-- @context of a subscription, kept so that its notifications can link to it).
ALTER TABLE user_contexts ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'Hosted';
