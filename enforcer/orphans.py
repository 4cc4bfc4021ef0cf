"""No orphaned holds: a check.lua ALLOW that no gateway knows of is undone (lua/undo_hold.lua:
release the hold, give back the rate budget, drop the idempotency record), since no usage report
will ever settle it.

check.lua refuses to act past the deadline it is given (our give-up time, in Redis's clock). What
it did before that deadline, after we had answered the check fail_open, is undone here:
- a late reply (Redis ran the script in time, its reply reached us after we gave up): an ALLOW is
  undone at once, on the same connection, so the undo runs after it;
- no reply ever (the connection was lost with the command written): Redis may have run it, or may
  still run it from its input buffer. Once Redis's clock is surely past the script's deadline it
  can no longer act, so the undo sent then runs after anything it did.
"""
from __future__ import annotations

import asyncio
import logging

import lua
from enforcer import metrics
from enforcer.redisclock import RedisClock
from enforcer.rediswire import Failure, RedisWire, ReplyError

log = logging.getLogger("tollgate.enforcer.orphans")

# Positions in ("EVALSHA", sha, numkeys, *KEYS, *ARGV) of check.lua (see its header): KEYS first
_CFG, _HELD, _HOLDS, _HOLD_EXP, _REQUEST, _RATE_R, _RATE_T, _INFLIGHT = 3, 5, 6, 7, 9, 10, 11, 14
# ARGV, from 3 + numkeys (the number of KEYS depends on the key's path)
_HOLD_ID, _REQUESTS, _TOKENS, _DEADLINE = 0, 1, 2, 7
# Positions in check.lua's reply
_ALLOWED, _RPM, _TPM, _REPLAYED = 0, 9, 10, 12
_REPLY_LEN = 14

RETRIES = 4  # an undo that got no reply is sent again (it is idempotent), 0.2 s apart


class Undo:
    def __init__(self, wire: RedisWire, clock: RedisClock, check_sha: str):
        self.wire = wire
        self.clock = clock
        self.check_sha = check_sha
        self.script = lua.load("undo_hold")
        self.pending: set[asyncio.Task] = set()
        wire.on_late = self.on_late
        wire.on_lost = self.on_lost

    def _is_check(self, args: tuple) -> bool:
        return (args[0] == "EVALSHA" and args[1] == self.check_sha and len(args) > 3
                and len(args) > 3 + int(args[2]) + _DEADLINE)

    def on_late(self, args: tuple, reply) -> None:
        """A reply whose call had given up: a fresh ALLOW of check.lua is undone now."""
        if (type(reply) is list and len(reply) == _REPLY_LEN and reply[_ALLOWED] == 1 and not reply[_REPLAYED]
                and self._is_check(args)):
            metrics.LATE_ALLOWS.inc()
            self._spawn(self._undo(args, reply[_RPM], reply[_TPM], 0.0))

    def on_lost(self, args: tuple) -> None:
        """A check written on a connection that was lost before its reply: undo whatever it did,
        once it can no longer do anything."""
        if self._is_check(args):
            metrics.LOST_CHECKS.inc()
            self._spawn(self._undo(args, "", "", self.clock.seconds_until(float(args[3 + int(args[2]) + _DEADLINE]))))

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _undo(self, args: tuple, rpm, tpm, after: float) -> None:
        if after:
            await asyncio.sleep(after)
        # EVAL, not EVALSHA: a rare path, and it never meets NOSCRIPT
        nkeys = int(args[2])
        a = 3 + nkeys
        keys = (args[_HELD], args[_HOLDS], args[_HOLD_EXP], args[_REQUEST], args[_RATE_R], args[_RATE_T], args[_CFG])
        if nkeys >= 12:  # the levels' in-flight counts (check.lua's KEYS 12)
            keys += (args[_INFLIGHT],)
        cmd = ("EVAL", self.script.source, len(keys), *keys, args[a + _HOLD_ID], args[a + _REQUESTS],
               args[a + _TOKENS], rpm, tpm)
        for _ in range(RETRIES + 1):
            reply = await self.wire.call(cmd, self.wire.hang_timeout)
            if type(reply) is not Failure:
                break
            await asyncio.sleep(0.2)
        if type(reply) is Failure or type(reply) is ReplyError:
            # Harmless when Redis stayed away past the check's deadline: the check can no longer act.
            metrics.UNDO_FAILED.inc()
            log.warning("could not undo hold %s: %r", args[3 + int(args[2]) + _HOLD_ID], reply)
        elif reply:
            metrics.HOLDS_UNDONE.inc()
