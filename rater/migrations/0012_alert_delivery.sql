-- Alerts: per-customer settings, the rater's pace state for spike alerts, and delivery (webhook
-- endpoints, one delivery per alert and endpoint, and the log of every attempt). The `alerts`
-- table itself is 0008's; `dispatched` marks an alert fanned out to its endpoints, `published`
-- one put on the bus (control.alert_delivery).

-- Per-customer overrides of the plan's `alerts:` section (tollgate.alert_rules): the same keys,
-- merged over the plan's (a key set here wins; null in a key turns that alert off).
CREATE TABLE alert_settings (
    customer_id text PRIMARY KEY REFERENCES customers (id),
    settings    jsonb NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Usage-spike state, one row per customer whose settings enable it: the spend of the current
-- hour (hours since the epoch, by the rater's clock) and an exponentially weighted average of the
-- hours before (`avg_micros`, weight 1/12 per hour: a trailing day), `hours` since the first
-- (for the early-history correction). Written in the rating transaction: exactly once per event.
CREATE TABLE alert_pace (
    customer_id text PRIMARY KEY,
    hour        integer NOT NULL,
    hour_micros bigint NOT NULL,
    avg_micros  numeric NOT NULL DEFAULT 0,  -- a statistic, not money: kept unrounded
    hours       integer NOT NULL DEFAULT 0
);

ALTER TABLE alerts ADD COLUMN dispatched boolean NOT NULL DEFAULT false,
                   ADD COLUMN published boolean NOT NULL DEFAULT false;
CREATE INDEX alerts_undispatched ON alerts (raised_at, id) WHERE NOT dispatched;
CREATE INDEX alerts_unpublished ON alerts (raised_at, id) WHERE NOT published;

-- Webhook endpoints: one customer's (customer_id) or every customer's (NULL). `kinds` empty =
-- every kind. The secret signs every delivery (HMAC-SHA256); it is shown once, at creation.
CREATE TABLE webhook_endpoints (
    id          text PRIMARY KEY,
    customer_id text REFERENCES customers (id),
    url         text NOT NULL,
    secret      text NOT NULL,
    kinds       text[] NOT NULL DEFAULT '{}',
    description text,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_by_customer ON webhook_endpoints (customer_id);

-- One delivery of one alert to one endpoint. pending -> delivered | failed (gave up at
-- give_up_at); a manual redelivery makes it pending again. next_attempt_at is also the lease of
-- an attempt under way (a worker that dies mid-POST leaves it to be tried again).
CREATE TABLE webhook_deliveries (
    id               text PRIMARY KEY,
    alert_id         text NOT NULL REFERENCES alerts (id),
    endpoint_id      text NOT NULL REFERENCES webhook_endpoints (id),
    customer_id      text NOT NULL,
    status           text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    give_up_at       timestamptz NOT NULL,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    UNIQUE (alert_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_customer ON webhook_deliveries (customer_id, created_at DESC);

-- Every attempt: the delivery log.
CREATE TABLE webhook_attempts (
    delivery_id  text NOT NULL REFERENCES webhook_deliveries (id),
    attempt      integer NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    status_code  integer,
    error        text,
    duration_ms  integer NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
