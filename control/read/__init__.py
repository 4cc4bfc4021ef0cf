"""The read side: usage from the rollups, the current period's preview, invoices and their sources, traces by correlation id, tier transitions, open holds, dead letters."""
