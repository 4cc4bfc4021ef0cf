-- Alerts raised for a customer: the one table every raiser writes (the rater's transaction for
-- spend, balance, tier and spike alerts; the control plane for credits), and the control plane's
-- delivery reads (webhooks, bus events). One row per (customer, kind, threshold, period): an alert
-- fires once per threshold and period, by this constraint (tollgate.alerts.raise_alert).
CREATE TABLE alerts (
    id text PRIMARY KEY,
    customer_id text NOT NULL REFERENCES customers (id),
    kind text NOT NULL,
    threshold text NOT NULL DEFAULT '',
    period text NOT NULL DEFAULT '',
    payload jsonb NOT NULL,
    source_event_id text,
    raised_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, kind, threshold, period)
);
CREATE INDEX alerts_by_time ON alerts (raised_at, id);
CREATE INDEX alerts_by_customer ON alerts (customer_id, raised_at DESC);
