-- Credits (control/credit_grants.py, control/adjustments.py, control/auto_recharge.py).
--
-- The Redis wallet stays one number (check.lua and settle.lua are unchanged); what part of it is
-- which grant is tracked here. wallet_transactions stays the one record of every change of a
-- balance outside rating, so `redis rebuild` (sum of wallet_transactions - sum of
-- processed_events.wallet_micros) includes grants, adjustments and expiries as it is.
--   grant       + the grant's amount, when it is given (grant_id names it)
--   adjustment  +/- an operator's credit or debit; note = its reason
--   expiry      - what was left of a grant when it expired (grant_id names it)
ALTER TABLE wallet_transactions DROP CONSTRAINT wallet_transactions_kind_check;
ALTER TABLE wallet_transactions ADD CONSTRAINT wallet_transactions_kind_check
    CHECK (kind IN ('topup', 'adjustment', 'grant', 'expiry'));
ALTER TABLE wallet_transactions ADD COLUMN grant_id text;

-- Credit given for a while: spent before the rest of the wallet (top-ups), lowest priority number
-- first, then the earliest expiry. remaining_micros goes down in the rating transaction by what the
-- wallet paid (tollgate.credit_grants.spend); a grant spent to nothing becomes 'used' (final); what
-- is left at expires_at leaves the balance as an `expiry` wallet transaction (status 'expired',
-- expired_micros = that amount).
CREATE TABLE credit_grants (
    id               text PRIMARY KEY,
    customer_id      text NOT NULL REFERENCES customers (id),
    kind             text NOT NULL CHECK (kind IN ('promotional', 'purchased')),
    priority         integer NOT NULL CHECK (priority BETWEEN 0 AND 100),
    amount_micros    bigint NOT NULL CHECK (amount_micros > 0),
    remaining_micros bigint NOT NULL CHECK (remaining_micros >= 0),
    expires_at       timestamptz,
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'used', 'expired')),
    expired_micros   bigint,
    expired_at       timestamptz,
    note             text,
    created_at       timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70);
-- The rating transaction rewrites remaining_micros of a few grants per customer and transaction:
-- no index names it (not even in a predicate) and pages keep free space, so those are HOT updates
-- (the new row version stays on its page, no index is touched). status changes once per grant.
CREATE INDEX credit_grants_live ON credit_grants (customer_id) WHERE status = 'active';
-- The expiry worker: grants due.
CREATE INDEX credit_grants_due ON credit_grants (expires_at) WHERE status = 'active' AND expires_at IS NOT NULL;

-- Low-balance auto-recharge: below threshold_micros, a `wallet.recharge_requested` alert asks the
-- provider's payment system to top up amount_micros. `armed`: the next fall below the threshold
-- raises one; cleared when it is raised, set again once the balance is back at or above the
-- threshold. `requests` counts the requests raised: the alert's period is `recharge-<requests>`,
-- so each one is unique and none is raised twice.
CREATE TABLE wallet_auto_recharge (
    customer_id      text PRIMARY KEY REFERENCES customers (id),
    enabled          boolean NOT NULL DEFAULT true,
    threshold_micros bigint NOT NULL CHECK (threshold_micros > 0),
    amount_micros    bigint NOT NULL CHECK (amount_micros > 0),
    armed            boolean NOT NULL DEFAULT true,
    requests         integer NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
