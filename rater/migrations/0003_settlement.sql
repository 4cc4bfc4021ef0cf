-- Settlement: tier promotions and the hold lifecycle (rater/settlement.py, rater/holds.py).
-- Redis decides (settle.lua / release_expired.lua are atomic); these tables record what it decided,
-- idempotently, so a redelivered event or a re-run sweep writes nothing twice.

-- Every spend-tier promotion: when, from what, to what, and the event whose spend crossed the threshold.
CREATE TABLE tier_transitions (
    id            bigserial PRIMARY KEY,
    customer_id   text NOT NULL REFERENCES customers(id),
    period        text NOT NULL,              -- 'YYYYMM'
    old_tier      text NOT NULL,
    new_tier      text NOT NULL,
    event_id      text NOT NULL UNIQUE,       -- the triggering usage event: one promotion at most
    spend_micros  bigint NOT NULL,            -- period spend right after that event
    at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tier_transitions_customer ON tier_transitions(customer_id, at);

-- One row per hold, its current state. Rows can arrive out of order (a usage event or the sweeper
-- may close a hold before its decision event is consumed), hence the nullable descriptive columns:
-- record_placed_holds fills them in later without reopening the hold.
CREATE TABLE holds (
    hold_id          text PRIMARY KEY,
    customer_id      text REFERENCES customers(id),
    request_id       text,
    key_id           text,                    -- the API key whose tokens/min budget the estimate used
    amount_micros    bigint,
    estimated_tokens bigint NOT NULL DEFAULT 0,
    placed_at        timestamptz,
    expires_at       timestamptz,
    status           text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'settled', 'expired')),
    released_micros  bigint,                  -- what Redis actually released when the hold closed
    event_id         text,                    -- the usage event that settled it
    closed_at        timestamptz
);
CREATE INDEX holds_open ON holds(customer_id, expires_at) WHERE status = 'open';

-- The auditable hold lifecycle (the "ledger" of holds): placed, then settled or expired, with the
-- amount placed/released. At most one row per (hold, kind), so replays add nothing. For every closed
-- hold, the released amounts of its 'settled' and 'expired' rows add up to the amount placed.
CREATE TABLE hold_events (
    id             bigserial PRIMARY KEY,
    hold_id        text NOT NULL,
    customer_id    text REFERENCES customers(id),
    kind           text NOT NULL CHECK (kind IN ('placed', 'settled', 'expired')),
    amount_micros  bigint NOT NULL,
    event_id       text,                      -- settled: the usage event
    at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (hold_id, kind)
);
CREATE INDEX hold_events_customer ON hold_events(customer_id, at);
