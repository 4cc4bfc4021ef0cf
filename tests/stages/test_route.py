import pytest

from tollgate.rating.pricing.base import ChargeLine
from tollgate.rating.stages import route
from tollgate.rating.stages.context import RatingContext
from tests.pricing.helpers import make_plan


@pytest.mark.parametrize(
    "mode, total, wallet, expected",
    [
        ("prepaid", 500, 100, (500, 0)),  # all to the wallet, even beyond the balance
        ("postpaid", 500, 10_000, (0, 500)),
        ("hybrid", 500, 10_000, (500, 0)),
        ("hybrid", 500, 200, (200, 300)),
        ("hybrid", 500, 0, (0, 500)),
        ("hybrid", 500, -50, (0, 500)),  # an overdrawn wallet pays nothing
        ("prepaid", -80, 0, (-80, 0)),  # credit (volume repricing) back to the wallet
        ("postpaid", -80, 0, (0, -80)),
        ("hybrid", -80, 1000, (0, -80)),  # hybrid credits go to the invoice
        ("hybrid", 0, 1000, (0, 0)),
    ],
)
def test_split(mode, total, wallet, expected):
    assert route.split(mode, total, wallet) == expected
    assert sum(expected) == total


def test_stage_uses_the_customer_mode_over_the_plan():
    plan = make_plan([{"id": "t", "model": "per_unit", "metric": "t", "unit_price": "1"}], billing_mode="postpaid")
    line = ChargeLine("t", "per_unit", "usage", "t", "default", 700, None, 700)
    out = route.run(RatingContext(plan, lines=(line,), wallet_available_micros=300))
    assert (out.wallet_micros, out.invoice_micros) == (0, 700)
    out = route.run(RatingContext(plan, billing_mode="hybrid", wallet_available_micros=300, lines=(line,)))
    assert (out.wallet_micros, out.invoice_micros) == (300, 400)


def test_unknown_mode():
    with pytest.raises(ValueError):
        route.split("barter", 1, 1)
