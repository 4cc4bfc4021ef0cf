-- Every version of every plan as applied (control.accounts.plans.apply_plan writes one row per
-- change, in the transaction that changes `plans`): the console's and the API's plan history.
CREATE TABLE plan_versions (
    plan_id     text NOT NULL REFERENCES plans (id),
    version     integer NOT NULL,
    document    jsonb NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plan_id, version)
);
-- The versions applied before this table existed: only their latest document is known.
INSERT INTO plan_versions (plan_id, version, document, applied_at)
SELECT id, version, document, updated_at FROM plans;
