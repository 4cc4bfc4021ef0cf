"""Pure stages of the rater, in order: allowance, rate, commit, discount, tax, route.

Entry points: tollgate.rating.stages.pipeline.run_event / run_close / run_batch -> RatingContext.
"""
