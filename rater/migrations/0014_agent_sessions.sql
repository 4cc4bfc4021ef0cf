-- Agent sessions (rater/sessions.py): a plan with `sessions: {idle_timeout_seconds: N}` has the
-- usage events that carry a session_id aggregated here, in the rating transaction, under the
-- customer's lock group; at the session's end (or after N idle seconds) the session is rated as
-- ONE event `ses_<customer_id>:<session_id>` (processed_events makes that once).
CREATE TABLE agent_sessions (
    customer_id    text NOT NULL,
    session_id     text NOT NULL,
    status         text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    key_id         text,                       -- the API key of its first event
    first_ts       timestamptz NOT NULL,       -- event time of its earliest event
    last_ts        timestamptz NOT NULL,       -- event time of its latest event
    -- When the idle sweeper may close it: the enforcer's receive time of its newest event (the
    -- event time when there is none) + the plan's idle timeout. Judged against the wall clock.
    idle_at        timestamptz NOT NULL,
    period         text NOT NULL,              -- of its first event: the billable session is rated in it
    dimensions     jsonb NOT NULL DEFAULT '{}',  -- its events' properties, the first value of each name
    measurements   jsonb NOT NULL DEFAULT '{}',  -- metric -> units, summed over its events
    event_count    integer NOT NULL DEFAULT 0,
    amount_micros  bigint NOT NULL DEFAULT 0,  -- what its billable event was charged (at close)
    cost_micros    bigint NOT NULL DEFAULT 0,  -- provider cost: its billable event's ledger cost_micros
    close_reason   text CHECK (close_reason IN ('end', 'idle', 'period_close')),
    opened_at      timestamptz NOT NULL DEFAULT now(),
    closed_at      timestamptz,
    PRIMARY KEY (customer_id, session_id)
);
CREATE INDEX agent_sessions_idle ON agent_sessions (idle_at) WHERE status = 'open';
CREATE INDEX agent_sessions_open_period ON agent_sessions (customer_id, period) WHERE status = 'open';
CREATE INDEX agent_sessions_customer_first ON agent_sessions (customer_id, first_ts DESC);

-- Every event of an opted-in session, as it was handled: 'aggregated' (its measurements are in
-- the session), 'rated_alone' (it came after the session closed: its own ledger lines) or
-- 'ignored' (a start/end without measurements after the close). The read API lists them.
CREATE TABLE agent_session_events (
    customer_id    text NOT NULL,
    session_id     text NOT NULL,
    event_id       text NOT NULL,
    event_type     text,
    ts             timestamptz NOT NULL,
    measurements   jsonb NOT NULL DEFAULT '{}',
    handled        text NOT NULL CHECK (handled IN ('aggregated', 'rated_alone', 'ignored')),
    PRIMARY KEY (customer_id, session_id, event_id)
);

-- A session's ledger lines: its billable event's, and those of events rated alone after it closed
-- (any event naming a session_id carries it, opted in or not). NULL for everything else.
ALTER TABLE ledger_lines ADD COLUMN session_id text;
CREATE INDEX ledger_lines_session ON ledger_lines (customer_id, session_id) WHERE session_id IS NOT NULL;
