"""The control plane: what operators and customers steer and read (accounts, credits, alerts,
the read side), over HTTP (`http/`) and the CLI, and the Redis projection it keeps for the hot
path (`projection/`). See control/README.md."""
