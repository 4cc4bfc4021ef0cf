-- Cost and margin (issue 10, item 6): what usage costs the provider, beside what it is charged.

-- Every ledger line's cost in micros (tollgate.rating.pricing.cost): the cost of the line's
-- metric, exact like amount_micros (a difference of rounded cumulative costs); 0 for lines with
-- no metric (flat, percentage, discount, tax) and for plans with no costs. Lines of kind 'cost'
-- (amount 0) carry the cost of a metric no other line of the event carries (a failed call that
-- is not billed). Lines written before this migration read 0.
ALTER TABLE ledger_lines ADD COLUMN cost_micros bigint NOT NULL DEFAULT 0;

-- Shared cost catalogs (e.g. a model vendor's token prices per model), named by plans with
-- `cost_catalog: <id>`; the plan's own `costs` win per metric. Versioned like plans: one row per
-- catalog, version + 1 when the document changes (the rater re-reads a customer's plan when it
-- sees a new version, control.accounts.cost_catalogs / rater.pipeline.Directory).
CREATE TABLE cost_catalogs (
    id          text PRIMARY KEY,
    version     integer NOT NULL DEFAULT 1,
    document    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Rollups carry cost beside amount, so margin per day or period is read without the ledger
-- (control.read.margin), and the outcome whose price covered the row: the composite charge id of
-- an outcome's own row and of the metrics metered under it in the same event, '' otherwise.
-- Margin by outcome groups by it; every other read sums over it.
ALTER TABLE usage_rollup_deltas
    ADD COLUMN outcome text NOT NULL DEFAULT '',
    ADD COLUMN cost_micros bigint NOT NULL DEFAULT 0;

ALTER TABLE usage_rollups
    ADD COLUMN outcome text NOT NULL DEFAULT '',
    ADD COLUMN cost_micros bigint NOT NULL DEFAULT 0,
    DROP CONSTRAINT usage_rollups_pkey,
    ADD PRIMARY KEY (customer_id, hour, metric, dims, key_id, outcome) INCLUDE (quantity, amount_micros, cost_micros, events);

ALTER TABLE usage_rollups_daily
    ADD COLUMN outcome text NOT NULL DEFAULT '',
    ADD COLUMN cost_micros bigint NOT NULL DEFAULT 0,
    DROP CONSTRAINT usage_rollups_daily_pkey,
    ADD PRIMARY KEY (customer_id, day, metric, dims, key_id, outcome) INCLUDE (quantity, amount_micros, cost_micros, events);
