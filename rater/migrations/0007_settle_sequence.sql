-- Settlement idempotency by a per-customer sequence instead of a Redis marker per event
-- (lua/settle.lua): the rating transaction gives each usage (and period close) row of a customer
-- the next number, under the customer's lock group; Redis keeps only the highest number settled.
-- A gap (a rater died between its commit and its settle) is filled from these rows by number.
-- key_id: the usage event's API key, whose tokens/min bucket settle.lua corrects (declared in KEYS).
ALTER TABLE processed_events ADD COLUMN key_id text, ADD COLUMN settle_seq bigint;

-- Rows from before: numbered in the order they were processed. Their customers' Redis marks do
-- not exist yet: run `tollgate redis rebuild` (raters stopped) after this migration, before the
-- new raters start; it writes each customer's mark from max(settle_seq).
UPDATE processed_events p SET settle_seq = s.n
FROM (SELECT event_id, row_number() OVER (PARTITION BY customer_id ORDER BY processed_at, event_id) AS n
      FROM processed_events WHERE kind IN ('usage', 'close')) s
WHERE p.event_id = s.event_id;

-- Unique: two writers can never give one number twice. Serves the last number of a customer (a
-- backward probe per customer and transaction), a gap's rows, and the rebuild's marks.
CREATE UNIQUE INDEX processed_events_settle_seq ON processed_events (customer_id, settle_seq)
    WHERE settle_seq IS NOT NULL;
