"""Tollgate: pieces shared by the enforcer (hot path) and the rater (control plane, rating)."""
