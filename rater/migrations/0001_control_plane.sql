-- Control plane: the durable source of truth that Redis is projected from.
CREATE TABLE plans (
    id          text PRIMARY KEY,
    version     integer NOT NULL DEFAULT 1,
    document    jsonb NOT NULL,          -- the validated plan document as applied
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customers (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    plan_id       text NOT NULL REFERENCES plans(id),
    billing_mode  text NOT NULL CHECK (billing_mode IN ('prepaid', 'postpaid', 'hybrid')),
    tier          text NOT NULL,          -- current spend tier (promoted by the rater)
    spend_cap_micros bigint,              -- overrides the plan's cap when set
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    customer_id  text NOT NULL REFERENCES customers(id),
    key_hash     text NOT NULL UNIQUE,    -- sha256 hex of the key; the key itself is never stored
    prefix       text NOT NULL,           -- first characters, to recognise a key in listings
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_customer ON api_keys(customer_id);

-- Every change of a prepaid balance outside rating (top-ups, adjustments); idempotent by id.
CREATE TABLE wallet_transactions (
    id            text PRIMARY KEY,
    customer_id   text NOT NULL REFERENCES customers(id),
    kind          text NOT NULL CHECK (kind IN ('topup', 'adjustment')),
    amount_micros bigint NOT NULL,
    note          text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wallet_transactions_customer ON wallet_transactions(customer_id);
