"""The billing simulator: a past period's usage rated under a draft plan, beside what was billed.

`reads` gathers the inputs in a few bulk statements; `simulate` rates them with the pure
pipeline and compares; `commands` is `tollgate simulate`. The HTTP route is control.http.simulator.
"""
