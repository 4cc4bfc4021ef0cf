-- Billing hierarchy (issue 10): customer -> team -> app|agent -> API key. A key's path is fixed
-- when it is created (no moves), so anything can derive it from key_id.
-- limits: the same object at every level, all optional (tollgate/limits.py validates it):
--   {"requests_per_minute": int, "tokens_per_minute": int, "spend_cap": "decimal string per
--    billing period", "max_in_flight": int}; explicit level limits are absolute (no tier multiplier).
CREATE TABLE teams (
    id           text PRIMARY KEY,
    customer_id  text NOT NULL REFERENCES customers(id),
    name         text NOT NULL,
    limits       jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX teams_customer ON teams(customer_id);

CREATE TABLE apps (
    id           text PRIMARY KEY,
    customer_id  text NOT NULL REFERENCES customers(id),
    team_id      text NOT NULL REFERENCES teams(id),
    kind         text NOT NULL DEFAULT 'app' CHECK (kind IN ('app', 'agent')),
    name         text NOT NULL,
    limits       jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX apps_team ON apps(team_id);
CREATE INDEX apps_customer ON apps(customer_id);

-- app_id NULL: the key hangs straight under its customer (every key created before this).
ALTER TABLE api_keys ADD COLUMN app_id text REFERENCES apps(id),
                     ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
CREATE INDEX api_keys_app ON api_keys(app_id) WHERE app_id IS NOT NULL;
-- Customer-level rate limits and in-flight; its spend cap stays spend_cap_micros / the plan's.
ALTER TABLE customers ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';

-- The path on every ledger line (appended to rater.ledger.LEDGER_COLUMNS), NULL when none.
ALTER TABLE ledger_lines ADD COLUMN key_id text, ADD COLUMN team_id text, ADD COLUMN app_id text;
