-- rating_cumulatives rows are rewritten by every rating transaction (about one row per event).
-- Free space on each page lets PostgreSQL make those HOT updates: the new row version stays on
-- its page and the primary key index is not touched. The rows are no longer locked FOR UPDATE
-- when read: the lock-group advisory lock serialises every writer (rater.ledger.read_cumulatives).
ALTER TABLE rating_cumulatives SET (fillfactor = 70);
