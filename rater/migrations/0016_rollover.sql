-- Rollover (tollgate/rating/rollover.py): unused included units a period carries into the next.
-- Written by the close of `from_period` (rater/rollovers.py), in the transaction that writes its
-- invoice, for the keys that carry something (units > 0); read by the rater (the units carried
-- into an event's period raise that key's quota), the next close (its own carry-out) and the
-- preview. `period` is the period the units are carried INTO.
-- credit_event_id: the processed_events row (kind 'rollover') of the credit the same close gave
--   `period` for its events rated before the units were known (NULL: none was needed).
CREATE TABLE rating_rollovers (
    customer_id      text NOT NULL,
    period           text NOT NULL,
    charge_id        text NOT NULL,
    dimension_key    text NOT NULL,
    units            bigint NOT NULL CHECK (units > 0),
    from_period      text NOT NULL,
    credit_event_id  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, period, charge_id, dimension_key)
);
