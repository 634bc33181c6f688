-- Room on each page of current_entities for the next version of its rows, so that an update (which
-- never changes the indexed columns id, types, created_at and, unless the location moves, geo_bbox)
-- is a HOT update: no new entries in the five indexes (two of them GIN and GiST). With full pages a
-- quarter of the single-entity updates of bench/broker.py were not HOT. Applies to pages written from now on.
ALTER TABLE current_entities SET (fillfactor = 70);
