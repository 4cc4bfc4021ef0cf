"""Credit grants (priority, expiry through the ledger), wallet adjustments and low-balance auto-recharge requests; the wallet change they share and the control process's credits tick."""
