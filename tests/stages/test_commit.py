import pytest

from tollgate.rating.stages import commit
from tollgate.rating.stages.context import RatingContext
from tests.pricing.helpers import make_plan

PLAN = make_plan([{"id": "tok", "model": "per_unit", "metric": "tokens", "unit_price": "1"}],
                 minimum_commit="100",
                 limits={"requests_per_minute": 1, "tokens_per_minute": 1, "monthly_spend_cap": "50"})


@pytest.mark.parametrize("subtotal, expected", [(0, 100_000_000), (99_999_999, 1), (100_000_000, 0), (150_000_000, 0)])
def test_true_up(subtotal, expected):
    assert commit.true_up(100_000_000, subtotal) == expected


@pytest.mark.parametrize(
    "before, after, flags",
    [
        (0, 79, ()), (0, 80, (80,)), (79, 80, (80,)), (80, 99, ()), (80, 100, (100,)),
        (79, 100, (80, 100)), (100, 200, ()), (0, 1000, (80, 100)),
    ],
)
def test_cap_flags_when_crossed(before, after, flags):
    assert commit.cap_flags(before, after, 100) == flags


def test_cap_flags_exact_in_integers():
    assert commit.cap_flags(0, 7, 9) == ()  # 80% of 9 is 7.2
    assert commit.cap_flags(7, 8, 9) == (80,)
    assert commit.cap_flags(0, 10**9, None) == () and commit.cap_flags(0, 10, 0) == ()


def test_stage_true_up_only_at_close_and_cap_override():
    ev = commit.run(RatingContext(PLAN, "event", subtotal_before_micros=39_000_000, subtotal_after_micros=41_000_000))
    assert (ev.commit_true_up_micros, ev.cap_flags) == (0, (80,))
    ev = commit.run(RatingContext(PLAN, "event", spend_cap_micros=200_000_000,
                                  subtotal_before_micros=39_000_000, subtotal_after_micros=41_000_000))
    assert ev.cap_flags == ()  # the customer's own cap
    close = commit.run(RatingContext(PLAN, "close", subtotal_before_micros=41_000_000,
                                     subtotal_after_micros=41_000_000))
    assert close.commit_true_up_micros == 59_000_000 and close.gross_after_micros == 100_000_000
