-- Usage rollups: what the read API sums instead of the ledger (control/usage.py). One row per
-- (customer, UTC hour, metric, dimension set, API key). The rater's rating transaction appends its
-- aggregated rows to usage_rollup_deltas (text COPY, as the ledger: rater/rollups.py), so they are
-- exactly as durable as the ledger lines they sum; a compactor in the rater folds the deltas into
-- usage_rollups and usage_rollups_daily about once a second (one statement: DELETE ... RETURNING
-- feeding both upserts). Reads sum a rollup table and the deltas not compacted yet.
--
-- dims: the event's properties (model, tool, ...) as a JSON object of strings, '{}' when none;
--   "by model" groups by dims->>'model'. Only scalar properties, at most rollups.MAX_DIMENSIONS
--   of them, each value at most rollups.MAX_VALUE characters (documented in docs/ARCHITECTURE.md).
-- key_id: the API key of the event, '' when the event named none.
-- metric: the measured metric; ledger lines with no metric (discount, tax) roll up under their
--   kind with quantity 0, so amounts summed over every metric equal the customer's spend.
-- quantity: units measured; amount_micros: what the ledger charged for them.
--
-- The primary key leads with (customer_id, hour): one customer's range of hours is one index range
-- scan, whatever the grouping; a key's usage is the same scan filtered on key_id. Autovacuum keeps
-- the visibility map of past hours set, so only the current hours' rows are read from the heap.
CREATE TABLE usage_rollups (
    customer_id    text NOT NULL,
    hour           timestamptz NOT NULL,
    metric         text NOT NULL,
    dims           jsonb NOT NULL DEFAULT '{}',
    key_id         text NOT NULL DEFAULT '',
    quantity       bigint NOT NULL DEFAULT 0,
    amount_micros  bigint NOT NULL DEFAULT 0,
    events         bigint NOT NULL DEFAULT 0,
    -- The sums ride in the key's index: a read is an index-only scan, whatever the heap's order
    -- (90 days by model per day: ~32,000 index tuples, not ~32,000 scattered heap pages).
    PRIMARY KEY (customer_id, hour, metric, dims, key_id) INCLUDE (quantity, amount_micros, events)
);

-- The same per UTC day, written by the same compaction (from the same deltas, in the same
-- statement): a day-bucketed read over 90 days reads 90 rows per series, not 2,160.
CREATE TABLE usage_rollups_daily (
    customer_id    text NOT NULL,
    day            date NOT NULL,             -- UTC
    metric         text NOT NULL,
    dims           jsonb NOT NULL DEFAULT '{}',
    key_id         text NOT NULL DEFAULT '',
    quantity       bigint NOT NULL DEFAULT 0,
    amount_micros  bigint NOT NULL DEFAULT 0,
    events         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (customer_id, day, metric, dims, key_id) INCLUDE (quantity, amount_micros, events)
);

-- Appended by rating transactions, emptied by the compactor: no index (it holds a few seconds of
-- rows; a read scans it), so an append costs what a ledger line's COPY costs, not an upsert.
CREATE TABLE usage_rollup_deltas (
    customer_id    text NOT NULL,
    hour           timestamptz NOT NULL,
    metric         text NOT NULL,
    dims           text NOT NULL,             -- canonical JSON (sorted names), cast at compaction
    key_id         text NOT NULL,
    quantity       bigint NOT NULL,
    amount_micros  bigint NOT NULL,
    events         bigint NOT NULL
);

-- The trace by correlation id (GET /admin/trace/{id}) finds a decision's hold by its request id
-- (the gateway's correlation id) without a scan: an equality lookup, a hash index (~1-2 µs a row).
CREATE INDEX holds_request ON holds USING hash (request_id);
