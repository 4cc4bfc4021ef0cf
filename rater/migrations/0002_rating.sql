-- Rating: idempotency records, the ledger, cumulatives for F(after) - F(before), dead letters,
-- invoices. Money is bigint micros; quantities and unit prices are numeric (exact).

-- One row per event whose effect is recorded (usage and fail_open events). The primary key is
-- the exactly-once guard: only a new row gets ledger lines and cumulative updates.
-- wallet_micros / spend_micros are the settlement figures: `tollgate redis rebuild` sums them.
CREATE TABLE processed_events (
    event_id        text PRIMARY KEY,
    kind            text NOT NULL,            -- usage | fail_open
    customer_id     text NOT NULL,
    period          text NOT NULL,            -- YYYYMM the charges belong to
    spend_micros    bigint NOT NULL DEFAULT 0,  -- total charge added to the period spend
    wallet_micros   bigint NOT NULL DEFAULT 0,  -- part debited from the prepaid wallet
    invoice_micros  bigint NOT NULL DEFAULT 0,  -- part left for the invoice
    hold_id         text,
    actual_tokens   bigint NOT NULL DEFAULT 0,
    correlation_id  text,
    processed_at    timestamptz NOT NULL DEFAULT now()
);

-- One line per charge. (event_id, line_no) as key: a second insert of an event's lines fails
-- loudly instead of double charging, and an event's lines are found without another index.
CREATE TABLE ledger_lines (
    event_id        text NOT NULL,
    line_no         smallint NOT NULL,
    correlation_id  text,
    customer_id     text NOT NULL,
    plan_id         text NOT NULL,
    period          text NOT NULL,
    kind            text NOT NULL,            -- usage | metered | percentage | discount | tax
    charge_id       text NOT NULL,
    metric          text,
    dimension_key   text NOT NULL DEFAULT 'default',
    quantity        bigint NOT NULL,          -- units; for percentage lines the base change in micros
    unit_price      numeric,                  -- NULL when the event spans several price tiers
    amount_micros   bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, line_no)
);
CREATE INDEX ledger_lines_customer_period ON ledger_lines (customer_id, period);
CREATE INDEX ledger_lines_correlation ON ledger_lines (correlation_id);

-- Period-to-date cumulative quantity per usage key (customer, period, charge, dimension key): the
-- state of the pricing engine (rater.pricing). Written in the ledger's transaction, rows locked
-- FOR UPDATE. A new period starts from no rows: month-to-date usage resets at the boundary.
CREATE TABLE rating_cumulatives (
    customer_id     text NOT NULL,
    period          text NOT NULL,
    charge_id       text NOT NULL,
    dimension_key   text NOT NULL,
    quantity        bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, period, charge_id, dimension_key)
);

-- Events that could not be rated, with the raw event and why; replayed once fixed.
CREATE TABLE dead_letters (
    id              bigserial PRIMARY KEY,
    event_id        text,
    customer_id     text,
    reason          text NOT NULL,            -- unknown_customer | unknown_metric | invalid_value | invalid_event
    detail          text NOT NULL DEFAULT '',
    raw             bytea NOT NULL,           -- the event exactly as it came off the bus
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'replayed', 'discarded')),
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz
);
-- An event is dead-lettered once while open (redelivery of the same bad event adds nothing).
CREATE UNIQUE INDEX dead_letters_open_event ON dead_letters (event_id) WHERE status = 'open' AND event_id IS NOT NULL;

-- Period close.
CREATE TABLE invoices (
    id                  text PRIMARY KEY,     -- inv_<customer>_<period>
    customer_id         text NOT NULL REFERENCES customers(id),
    period              text NOT NULL,
    plan_id             text NOT NULL,
    currency            text NOT NULL,
    billing_mode        text NOT NULL,
    subtotal_micros     bigint NOT NULL,      -- usage + recurring + true-up, before discounts
    discount_micros     bigint NOT NULL,
    tax_micros          bigint NOT NULL,
    total_micros        bigint NOT NULL,      -- subtotal - discount + tax
    prepaid_micros      bigint NOT NULL,      -- already paid from the wallet
    amount_due_micros   bigint NOT NULL,      -- total - prepaid
    status              text NOT NULL DEFAULT 'issued',
    closed_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, period)
);

CREATE TABLE invoice_lines (
    invoice_id      text NOT NULL REFERENCES invoices(id),
    line_no         integer NOT NULL,
    kind            text NOT NULL,            -- usage | recurring | percentage | true_up | discount | tax | prepaid
    charge_id       text,
    metric          text,
    dimension_key   text,
    description     text NOT NULL,
    quantity        numeric NOT NULL DEFAULT 0,
    amount_micros   bigint NOT NULL,
    -- ledger kinds this line sums: with (customer, period, charge, dimension) it selects the
    -- ledger lines, hence the correlation_ids, the line traces to
    ledger_kinds    text[] NOT NULL DEFAULT '{}',
    ledger_lines    integer NOT NULL DEFAULT 0,
    PRIMARY KEY (invoice_id, line_no)
);
