"""`tollgate`, the admin CLI.

Each module in COMMAND_MODULES has `register(sub)`, adding its commands with `group()` and
`command()`. A handler takes a Context and may be async; it prints with `ctx.emit(data, text)` so
`--json` works everywhere. Bad input (a ValueError with a `.field`, e.g. ControlError or PlanError)
prints one line naming the field and exits 2; an unreachable backend prints one line, exits 1.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from tollgate.config import Settings, settings

if TYPE_CHECKING:
    from tollgate.backends import Backends

# Add your module here; its register(sub) is called with the top-level subparsers.
COMMAND_MODULES = [
    "control.accounts.commands",  # db, plans, costs, customers, keys, wallets, admin
    "control.projection.rebuild",  # redis rebuild
    "rater.dead_letters",  # dead-letters list / replay / discard
    "rater.service",  # rater run
    "rater.periods",  # periods close / invoice
    "control.alerts.commands",  # webhooks, alerts
    "control.accounts.lifecycle_commands",  # customers plan / update / suspend / reactivate / archive / audit
    "control.read.commands",  # usage, preview, invoices, trace
    "control.credits.commands",  # wallets adjust, credits grant / list / expire / auto-recharge
    "control.margin_guard.commands",  # guard show / set / clear / reset
    "control.accounts.hierarchy_commands",  # teams, apps, keys limits, customers limits / tree
    "control.simulator.commands",  # simulate
]

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 1


@dataclass
class Context:
    args: argparse.Namespace
    settings: Settings

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def backends(self) -> Backends:
        """A command's PostgreSQL pool and Redis client (`async with ctx.backends() as (db, redis)`)."""
        from tollgate.backends import Backends  # noqa: PLC0415  (asyncpg and redis only when a command needs them)

        return Backends(self.settings, max_pool=2)

    def emit(self, data: Any, text: str | None = None) -> None:
        """JSON with --json, else the human text (or the JSON, indented, when there is none)."""
        if self.json or text is None:
            sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 if not self.json else 0).decode() + "\n")
        else:
            sys.stdout.write(text.rstrip("\n") + "\n")


Handler = Callable[[Context], Any]


def _common() -> argparse.ArgumentParser:
    # SUPPRESS: `tollgate --json x y` and `tollgate x y --json` both work, neither undoes the other.
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    return p


def group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """The subparsers of command group `name` (created once; several modules may add to it)."""
    groups: dict = sub.__dict__.setdefault("_tollgate_groups", {})
    if name not in groups:
        parser = sub.add_parser(name, help=help, description=help)
        groups[name] = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
    return groups[name]


def command(sub: argparse._SubParsersAction, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help, parents=[_common()])
    parser.set_defaults(handler=handler)
    return parser


def build_parser(modules: Iterable[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate", description="Tollgate admin: plans, customers, keys, wallets.")
    parser.add_argument("--json", action="store_true", default=False, help="machine-readable output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain aligned table for human output."""
    if not rows:
        return "(none)"
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _unavailable(e: BaseException) -> bool:
    import asyncpg  # noqa: PLC0415  (only when something failed)
    import redis.exceptions  # noqa: PLC0415

    return isinstance(e, (OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                          asyncpg.CannotConnectNowError, asyncpg.InterfaceError))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = Context(args, settings())
    try:
        result = args.handler(ctx)
        if inspect.isawaitable(result):
            result = asyncio.run(result)
        return int(result or 0)
    except KeyboardInterrupt:
        return 130
    except ValueError as e:
        if getattr(e, "field", None) is None:
            raise
        print(f"tollgate: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        if type(e).__name__ == "UndefinedTableError":  # asyncpg: a database never migrated
            print("tollgate: error: the database has no tollgate schema: run `tollgate db migrate`", file=sys.stderr)
            return EXIT_UNAVAILABLE
        if not _unavailable(e):
            raise
        print(f"tollgate: error: cannot reach PostgreSQL or Redis ({type(e).__name__}: {e}); "
              "check TOLLGATE_DATABASE_URL and TOLLGATE_REDIS_URL", file=sys.stderr)
        return EXIT_UNAVAILABLE
