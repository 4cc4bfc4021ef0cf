"""No orphaned holds: an ALLOW of check.lua whose reply came after the check was answered
fail_open is undone at once (lua/undo_hold.lua: release the hold, give back the rate budget,
drop the idempotency record), since no gateway holds its id and no usage report will settle it.

check.lua itself refuses to act past the deadline it is given (Redis TIME), which covers a
command Redis runs after we dropped its connection; this covers the window before that deadline,
where Redis ran the script in time but its reply reached us after we had given up (Redis stalled
a few ms, a slow network, our give-up on silence).
"""
from __future__ import annotations

import asyncio
import logging

import lua
from enforcer import metrics
from enforcer.rediswire import Failure, RedisWire, ReplyError

log = logging.getLogger("tollgate.enforcer.orphans")

# Positions in ("EVALSHA", sha, 9, *KEYS, *ARGV) of check.lua (see its header)
_HELD, _HOLDS, _HOLD_EXP, _REQUEST, _RATE_R, _RATE_T = 5, 6, 7, 9, 10, 11
_HOLD_ID, _REQUESTS, _TOKENS = 12, 13, 14
# Positions in check.lua's reply
_ALLOWED, _HOLD, _RPM, _TPM, _REPLAYED = 0, 2, 9, 10, 12

RETRIES = 4  # an undo that got no reply is sent again (it is idempotent), 0.2 s apart


class LateAllowUndo:
    def __init__(self, wire: RedisWire, check_sha: str):
        self.wire = wire
        self.check_sha = check_sha
        self.script = lua.load("undo_hold")
        self.pending: set[asyncio.Task] = set()
        wire.on_late = self.on_late

    def on_late(self, args: tuple, reply) -> None:
        """Every reply whose call had given up: a fresh ALLOW of check.lua is undone."""
        if (type(reply) is list and len(reply) == 13 and reply[_ALLOWED] == 1 and not reply[_REPLAYED]
                and args[0] == "EVALSHA" and args[1] == self.check_sha):
            # EVAL, not EVALSHA: a rare path, and it never meets NOSCRIPT
            cmd = ("EVAL", self.script.source, 6, args[_HELD], args[_HOLDS], args[_HOLD_EXP], args[_REQUEST],
                   args[_RATE_R], args[_RATE_T], reply[_HOLD], args[_REQUESTS], args[_TOKENS],
                   reply[_RPM], reply[_TPM])
            metrics.LATE_ALLOWS.inc()
            task = asyncio.ensure_future(self._undo(cmd))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def _undo(self, cmd: tuple) -> None:
        for attempt in range(RETRIES + 1):
            reply = await self.wire.call(cmd, self.wire.hang_timeout)
            if type(reply) is not Failure:
                break
            await asyncio.sleep(0.2)
        if type(reply) is Failure or type(reply) is ReplyError:
            metrics.UNDO_FAILED.inc()
            log.error("could not undo the late hold %s: %r", cmd[9], reply)
        elif reply:
            metrics.HOLDS_UNDONE.inc()
