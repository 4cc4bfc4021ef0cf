-- The enforcer's decisions per customer, hour, decision and reason (rater/decisions.py), for the
-- console and GET /admin/customers/{id}/decisions: denials by reason, which nothing else keeps
-- (an ALLOW leaves a hold; a DENY leaves nothing). Counted from the bus's decision events, at
-- least once: a redelivered batch counts its decisions again (operator figures, never billed).
CREATE TABLE decision_counts (
    customer_id text NOT NULL,
    hour timestamptz NOT NULL,
    decision text NOT NULL,
    reason text NOT NULL,
    level text NOT NULL DEFAULT '',          -- the hierarchy level that decided a DENY ('' when none)
    count bigint NOT NULL,
    PRIMARY KEY (customer_id, hour, decision, reason, level)
);
