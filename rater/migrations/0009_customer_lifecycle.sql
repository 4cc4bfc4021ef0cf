-- Customer lifecycle (control.lifecycle): status, optimistic concurrency, a plan change waiting for
-- the next period, negotiated prices, and the audit trail of every change.
ALTER TABLE customers
    -- every lifecycle update must name the version it read (If-Match / `version`); +1 per change
    ADD COLUMN version integer NOT NULL DEFAULT 1,
    -- suspended: checks DENY `suspended`, usage still rated; archived: keys revoked, hidden from lists
    ADD COLUMN status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'archived')),
    -- a plan change at the period boundary: rated from this period on (rater.pipeline Directory),
    -- made the customer's plan by the close of the period before it (rater.periods)
    ADD COLUMN pending_plan_id text REFERENCES plans (id),
    ADD COLUMN pending_from_period text,
    -- negotiated prices: [{charge_id, match, unit_price | tiers | included_units}], over the plan's
    ADD COLUMN prices jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT customers_pending_complete CHECK ((pending_plan_id IS NULL) = (pending_from_period IS NULL));

-- Who changed what, when: one row per lifecycle change, written in the change's transaction.
CREATE TABLE customer_audit (
    id          bigserial PRIMARY KEY,
    customer_id text NOT NULL REFERENCES customers (id),
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,            -- e.g. admin:1a2b3c4d (the token's sha256 prefix), cli:<user>
    action      text NOT NULL,
    version     integer NOT NULL,         -- the customer's version after the change
    period      text NOT NULL,            -- the customer's period when it changed
    -- prices changed within `period` (plan change now, negotiated prices): the close of that
    -- period cannot cross-check its invoice against a batch rating under one plan
    repriced    boolean NOT NULL DEFAULT false,
    before      jsonb NOT NULL,
    after       jsonb NOT NULL
);
CREATE INDEX customer_audit_customer ON customer_audit (customer_id, id DESC);
