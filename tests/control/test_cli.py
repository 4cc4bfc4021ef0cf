"""The `tollgate` console script run as a real subprocess against the test PostgreSQL and Redis."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.control.conftest import plan_text, uid
from tollgate.keys import CustomerKeys, api_key_hash, api_key_record
from tollgate.local_services import free_port

TOLLGATE = str(Path(sys.executable).parent / "tollgate")


@pytest.fixture
def cli(pg_dsn, redis_server):
    env = {**os.environ, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_REDIS_URL": redis_server.url}

    def run(*args: str, expect: int = 0, **overrides: str) -> subprocess.CompletedProcess:
        p = subprocess.run([TOLLGATE, *args], env={**env, **overrides}, capture_output=True, text=True, timeout=60)
        assert p.returncode == expect, (p.returncode, p.stdout, p.stderr)
        assert "Traceback" not in p.stderr
        return p
    return run


async def test_full_flow(cli, redis, tmp_path):
    pid = uid("plan")
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(plan_text(pid))

    assert "schema up to date" in cli("db", "migrate").stdout
    assert f"plan {pid} created (version 1)" in cli("plans", "apply", str(plan_file)).stdout
    assert f"plan {pid} unchanged (version 1)" in cli("plans", "apply", str(plan_file)).stdout
    assert pid in cli("plans", "list").stdout

    customer = json.loads(cli("customers", "create", "--name", "Acme", "--plan", pid, "--json").stdout)
    cid = customer["id"]
    assert (customer["tier"], customer["billing_mode"]) == ("free", "prepaid")
    assert await redis.hget(CustomerKeys(cid).cfg, "rpm.free") == b"60"

    out = cli("keys", "create", "--customer", cid).stdout
    key = next(w for w in out.split() if w.startswith("tg_live_"))
    assert "shown only this once" in out
    assert await redis.hget(api_key_record(api_key_hash(key)), "customer_id") == cid.encode()

    first = cli("wallets", "topup", "--customer", cid, "--amount", "10.00", "--id", "pay-1").stdout
    assert "credited; balance 10.00" in first
    again = cli("wallets", "topup", "--customer", cid, "--amount", "10.00", "--id", "pay-1").stdout
    assert "already applied, not credited again; balance 10.00" in again
    wallet = json.loads(cli("--json", "wallets", "show", "--customer", cid).stdout)
    assert (wallet["balance"], wallet["topups_total"], wallet["topups"]) == ("10.00", "10.00", 1)
    assert await redis.get(CustomerKeys(cid).wallet) == b"10000000"

    shown = cli("customers", "show", cid).stdout
    assert "1 active of 1" in shown and "balance 10.00 USD" in shown

    keys = json.loads(cli("keys", "list", "--customer", cid, "--json").stdout)
    assert len(keys) == 1 and key not in json.dumps(keys)
    assert "revoked" in cli("keys", "revoke", keys[0]["id"]).stdout
    assert await redis.hget(api_key_record(api_key_hash(key)), "status") == b"revoked"
    assert cid in cli("customers", "list", "--plan", pid).stdout


@pytest.mark.parametrize(("replace", "field"), [
    ({'unit_price: "0.000003"': "unit_price: 0.000003"}, "charges[0].unit_price"),
    ({"tokens_per_minute: 100000": "tokens_per_minute: many"}, "limits.tokens_per_minute"),
])
def test_bad_plan_exits_2_naming_the_field(cli, tmp_path, replace, field):
    f = tmp_path / "bad.yaml"
    f.write_text(plan_text(uid("plan"), replace))
    p = cli("plans", "apply", str(f), expect=2)
    assert p.stderr.startswith(f"tollgate: error: {field}: ") and p.stderr.count("\n") == 1


async def test_bad_input_exits_2_naming_the_field(cli, pg, redis, plan_id, customer_id, tmp_path):
    cases = [
        (["customers", "create", "--name", "A", "--plan", "no_such_plan"], "plan_id"),
        (["customers", "create", "--name", "A", "--plan", plan_id, "--spend-cap", "x"], "spend_cap"),
        (["customers", "create", "--name", "A", "--plan", plan_id, "--billing-mode", "weekly"], "billing_mode"),
        (["keys", "create", "--customer", "cus_nobody"], "customer_id"),
        (["keys", "revoke", "key_nothing"], "key_id"),
        (["wallets", "topup", "--customer", customer_id, "--amount", "-1"], "amount"),
        (["wallets", "topup", "--customer", customer_id, "--amount", "1", "--id", "a b"], "id"),
        (["plans", "apply", str(tmp_path / "missing.yaml")], "file"),
    ]
    for args, field in cases:
        p = cli(*args, expect=2)
        assert p.stderr.startswith(f"tollgate: error: {field}: "), (args, p.stderr)
    assert await redis.get(CustomerKeys(customer_id).wallet) is None


def test_unreachable_redis_is_one_line_exit_1(cli, tmp_path):
    f = tmp_path / "plan.yaml"
    f.write_text(plan_text(uid("plan")))
    p = cli("plans", "apply", str(f), expect=1, TOLLGATE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert p.stderr.startswith("tollgate: error: cannot reach") and p.stderr.count("\n") == 1


def test_modules_can_share_a_command_group_and_json_goes_anywhere():
    import argparse

    from tollgate.cli import command, group

    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true", default=False)
    sub = parser.add_subparsers(dest="command", required=True)
    command(group(sub, "redis", "first module"), "rebuild", lambda ctx: None, "x")
    command(group(sub, "redis", "second module"), "check", lambda ctx: None, "y")
    assert parser.parse_args(["redis", "check"]).json is False
    assert parser.parse_args(["--json", "redis", "rebuild"]).json is True
    assert parser.parse_args(["redis", "rebuild", "--json"]).json is True
