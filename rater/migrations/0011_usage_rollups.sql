-- Usage rollups: what the read API sums instead of the ledger (control/usage.py). One row per
-- (customer, UTC hour, metric, dimension set, API key), upserted in the rater's rating transaction
-- (rater/rollups.py), so a rollup is exactly as durable as the ledger lines it sums.
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
-- scan, whatever the grouping; a key's usage is the same scan filtered on key_id.
CREATE TABLE usage_rollups (
    customer_id    text NOT NULL,
    hour           timestamptz NOT NULL,
    metric         text NOT NULL,
    dims           jsonb NOT NULL DEFAULT '{}',
    key_id         text NOT NULL DEFAULT '',
    quantity       bigint NOT NULL DEFAULT 0,
    amount_micros  bigint NOT NULL DEFAULT 0,
    events         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (customer_id, hour, metric, dims, key_id)
) WITH (fillfactor = 80);  -- free space for HOT updates: the current hour's rows are rewritten often

-- The trace by correlation id (GET /admin/trace/{id}) finds a decision's hold by its request id
-- (the gateway's correlation id) without a scan: an equality lookup, a hash index (~1-2 µs a row).
CREATE INDEX holds_request ON holds USING hash (request_id);
