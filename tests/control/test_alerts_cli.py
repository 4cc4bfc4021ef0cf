"""`tollgate webhooks ...` and `tollgate alerts ...` as a real subprocess (the README's daily task)."""
from __future__ import annotations

import json

from tests.control.test_cli import cli  # noqa: F401  (the fixture)


async def test_set_up_an_alert_webhook(cli, customer_id):  # noqa: F811
    out = cli("webhooks", "create", "--url", "https://hooks.example.test/tg", "--customer", customer_id,
              "--kind", "spend.threshold", "--kind", "wallet.balance_low").stdout
    assert "signing secret: whsec_" in out and "shown only this once" in out
    w = json.loads(cli("webhooks", "create", "--url", "http://127.0.0.1:9/x", "--customer", customer_id, "--json").stdout)
    assert w["secret"].startswith("whsec_") and w["kinds"] == []
    listed = json.loads(cli("webhooks", "list", "--customer", customer_id, "--json").stdout)
    assert w["id"] in [x["id"] for x in listed] and all("secret" not in x for x in listed)
    assert "disabled" in cli("webhooks", "disable", w["id"]).stdout

    s = json.loads(cli("alerts", "set", "--customer", customer_id, '{"balance_below": "5.00"}', "--json").stdout)
    assert s["effective"]["balance_below"] == "5.00" and s["overrides"] == {"balance_below": "5.00"}
    assert json.loads(cli("alerts", "settings", "--customer", customer_id, "--json").stdout)["effective"] == s["effective"]
    err = cli("alerts", "set", "--customer", customer_id, '{"usage_spike": {"factor": 0}}', expect=2).stderr
    assert "usage_spike.factor" in err
    assert "url" in cli("webhooks", "create", "--url", "ftp://x", expect=2).stderr
    assert json.loads(cli("alerts", "list", "--customer", customer_id, "--json").stdout) == []
    assert json.loads(cli("webhooks", "deliveries", "--customer", customer_id, "--json").stdout) == []
    assert "no delivery" in cli("webhooks", "redeliver", "dlv_nope", expect=2).stderr
