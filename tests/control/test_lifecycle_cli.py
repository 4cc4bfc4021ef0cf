"""`tollgate customers plan|update|suspend|reactivate|archive|audit` as a real subprocess."""
import json

from tests.control.conftest import plan_text, uid
from tests.control.test_cli import cli  # noqa: F401  (the fixture)
from tollgate.keys import CustomerKeys


async def test_daily_task_change_a_plan(cli, redis, tmp_path):  # noqa: F811
    old, new = uid("plan"), uid("plan")
    for pid in (old, new):
        (tmp_path / f"{pid}.yaml").write_text(plan_text(pid))
        cli("plans", "apply", str(tmp_path / f"{pid}.yaml"))
    cid = json.loads(cli("customers", "create", "--name", "Acme", "--plan", old, "--json").stdout)["id"]
    assert "status active, version 1" in cli("customers", "show", cid).stdout

    out = cli("customers", "plan", cid, "--plan", new, "--version", "1").stdout  # a commit: at the period's end
    assert "plan change pending" in out and f"plan {new} from period" in out
    p = cli("customers", "plan", cid, "--plan", new, "--effective", "now", "--version", "1", expect=2)
    assert "version" in p.stderr and "at version 2" in p.stderr  # stale: refused, nothing changed
    assert "plan changed" in cli("customers", "plan", cid, "--plan", new, "--effective", "now", "--version", "2").stdout
    assert await redis.hget(CustomerKeys(cid).cfg, "plan") == new.encode()

    (tmp_path / "prices.yaml").write_text("- {charge_id: input_tokens, match: {model: m1}, unit_price: '0.000001'}\n")
    c = json.loads(cli("customers", "update", cid, "--prices", str(tmp_path / "prices.yaml"), "--spend-cap", "20",
                       "--version", "3", "--json").stdout)
    assert (c["spend_cap"], c["prices"][0]["unit_price"], c["version"]) == ("20.00", "0.000001", 4)
    assert "suspended" in cli("customers", "suspend", cid, "--version", "4").stdout
    assert await redis.hget(CustomerKeys(cid).cfg, "status") == b"suspended"
    assert "reactivated" in cli("customers", "reactivate", cid, "--version", "5").stdout
    assert "archived" in cli("customers", "archive", cid, "--version", "6").stdout
    assert cid not in cli("customers", "list", "--plan", new).stdout
    audit = json.loads(cli("customers", "audit", cid, "--json").stdout)
    assert [a["action"] for a in audit] == ["archive", "reactivate", "suspend", "update", "plan_change", "plan_change"]
    assert all(a["actor"].startswith("cli:") for a in audit)
    assert "plan_change" in cli("customers", "audit", cid).stdout
