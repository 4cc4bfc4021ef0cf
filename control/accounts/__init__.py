"""Plans, customers (and their lifecycle: plan changes, status, audit), API keys and wallets: the catalog operators build, projected into Redis inside each transaction."""
