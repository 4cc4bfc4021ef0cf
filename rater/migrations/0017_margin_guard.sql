-- Margin Guard (tollgate.margin_guard): a customer's own rules, and the trips.
-- A customer's rules replace its plan's `margin_guard:` list as a whole; no row: the plan's.
CREATE TABLE margin_guard_settings (
    customer_id text PRIMARY KEY REFERENCES customers (id),
    rules jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per trip: a rule broken for a subject (`subject` is the field of the customer's guard
-- hash in Redis: customer | team:<id> | app:<id> | key:<id> | session:<id>). A rule trips once
-- per subject and period (the UNIQUE): an operator's reset lets the subject go on for the rest of
-- the period, and a redelivered batch proposes the same trip again to no effect.
-- Active = reset_at IS NULL; a `deny` trip's field is set in Redis while active (rebuilt from here).
CREATE TABLE margin_guard_trips (
    id text PRIMARY KEY,
    customer_id text NOT NULL REFERENCES customers (id),
    rule_id text NOT NULL,
    subject text NOT NULL,
    period text NOT NULL,
    action text NOT NULL CHECK (action IN ('deny', 'alert')),
    detail jsonb NOT NULL,                -- the figures at the trip (cost, limit, price, margin)
    source_event_id text,
    tripped_at timestamptz NOT NULL DEFAULT now(),
    reset_at timestamptz,
    reset_by text,
    UNIQUE (customer_id, rule_id, subject, period)
);
CREATE INDEX margin_guard_trips_active ON margin_guard_trips (customer_id) WHERE reset_at IS NULL AND action = 'deny';
CREATE INDEX margin_guard_trips_by_customer ON margin_guard_trips (customer_id, tripped_at DESC);
