-- Tiers at the period boundary: `tollgate periods close` sets the tier each customer enters the next
-- period with (rater.tiers.reset_for_next_period) and records it here as reason 'period_reset'.
-- Such a row has no triggering event (event_id NULL); its period is the period it sets the tier
-- for (the one after the closed period), and spend_micros is the closed period's usage spend.
-- At most one per customer and period: re-running a close records nothing twice.
ALTER TABLE tier_transitions ADD COLUMN reason text NOT NULL DEFAULT 'promotion'
    CHECK (reason IN ('promotion', 'period_reset'));
ALTER TABLE tier_transitions ALTER COLUMN event_id DROP NOT NULL;
ALTER TABLE tier_transitions ADD CONSTRAINT tier_transitions_event_of_promotion
    CHECK ((reason = 'promotion') = (event_id IS NOT NULL));
CREATE UNIQUE INDEX tier_transitions_period_reset ON tier_transitions (customer_id, period)
    WHERE reason = 'period_reset';
