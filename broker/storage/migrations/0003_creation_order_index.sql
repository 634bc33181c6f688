-- Query results come in creation order (as Orion-LD returns them); walking this index lets
-- `... ORDER BY created_at, id LIMIT n` stop after n matches instead of sorting every match.
CREATE INDEX IF NOT EXISTS current_entities_creation_order_index ON current_entities (created_at, id);
