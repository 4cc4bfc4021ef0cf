"""The hot path's wire on a Redis Cluster: one RedisWire per master, each command sent to the master
that serves the slot of its first key.

It has RedisWire's interface (call(args, timeout) -> a future of reply | ReplyError | Failure, never
raising; connected; close(); on_reply; hang_timeout; the prelude sent on every new connection), so
the Guard, the key cache and the endpoints do not know which one they hold. It wraps RedisWire
instances and touches none of their internals.

- Routing: the slot of the first key (CRC16 of its hash tag, `{cust}` for every customer key), so
  check.lua runs on the master holding all of that customer's keys. Commands without a key (PING,
  SCRIPT LOAD) go to every master: a NOSCRIPT reload then reaches the node that needs it.
- Topology: CLUSTER SLOTS, read at start, after a MOVED, after a connection to a node fails, and
  every few seconds, on control connections of their own (so these replies do not reach the
  breaker through `on_reply`, and a topology read never queues behind checks).
- MOVED: the slot is remapped at once and the command sent again to the right master within what
  is left of the call's time (a MOVED reply means the command did not run, so resending is safe).
- ASK (a slot being migrated, the key already moved): ASKING and the command go to the target in
  one write; the map does not change (the slot is still the source's until SETSLOT NODE).
- A failover: calls to the dead master fail (Failure "connect"/"disconnected": the check fails
  open) and each failure asks for a topology read (at most every REFRESH_MIN_GAP_S); once a replica
  is promoted, CLUSTER SLOTS names it and real decisions resume, with no restart.
"""
from __future__ import annotations

import asyncio
import binascii
import logging
import time
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from enforcer.rediswire import SLOW, Failure, RedisWire, ReplyError
from tollgate.redis_client import seeds

log = logging.getLogger("tollgate.enforcer.cluster")

SLOTS = 16384
REFRESH_EVERY_S = 5.0  # a reshard with no traffic on the moved slot is noticed within this
REFRESH_MIN_GAP_S = 0.1  # failures and MOVEDs ask for a topology read at most this often
MAX_REDIRECTS = 3
TIMED_OUT = SLOW  # Redis answered (MOVED, ASK), but no time was left to follow it
UNMAPPED = Failure("unmapped")  # no master known for the slot (topology not readable)
_RECONNECT = ("connect", "disconnected")  # failures that may mean the node is gone
_KEYLESS = frozenset(("PING", "SCRIPT", "INFO", "TIME", "ECHO", "CLUSTER", "FUNCTION", "WAIT"))


def key_slot(key: str | bytes) -> int:
    """The cluster slot of a key: CRC16 (XMODEM) of its hash tag, or of the whole key without one."""
    k = key.encode() if isinstance(key, str) else key
    start = k.find(b"{")
    if start >= 0:
        end = k.find(b"}", start + 1)
        if end > start + 1:
            k = k[start + 1:end]
    return binascii.crc_hqx(k, 0) % SLOTS


def first_key(args: tuple) -> Any:
    """The key a command is routed by, None for a command without keys."""
    name = args[0]
    if name == "EVALSHA":  # the hot path's command, first
        return args[3] if args[2] else None
    name = name.upper() if isinstance(name, str) else name.decode().upper()
    if name in ("EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL", "FCALL_RO"):
        return args[3] if int(args[2]) > 0 else None
    if name in _KEYLESS or len(args) < 2:
        return None
    return args[1]


def _hook(name: str) -> property:
    """A RedisWire callback (on_reply, on_late, on_lost): set on every node's wire, now and later."""
    def get(self):
        return self._hooks.get(name)

    def set(self, callback) -> None:
        self._hooks[name] = callback
        for wire in self._wires.values():
            setattr(wire, name, callback)
    return property(get, set)


class ClusterWire:
    on_reply = _hook("on_reply")  # each reply as it arrives
    on_late = _hook("on_late")  # (args, reply) of a reply whose call already gave up
    on_lost = _hook("on_lost")  # args of a written command whose reply will never come

    def __init__(self, url: str, connect_timeout: float = 0.25, hang_timeout: float = 0.5, prelude: tuple[tuple, ...] = (),
                 max_wait: float = 0.04, refresh_every_s: float = REFRESH_EVERY_S):
        first, self._seeds = seeds(url)  # `redis://h1:p1,h2:p2/0`: any live one will do
        self._url = urlsplit(first)
        self.connect_timeout = connect_timeout
        self.hang_timeout = hang_timeout
        self.max_wait = max_wait  # RedisWire's cap while Redis answers (see enforcer.rediswire)
        self._prelude = prelude
        self.refresh_every_s = refresh_every_s
        self._hooks: dict = {}
        self._wires: dict[tuple[str, int], RedisWire] = {}  # data connections, one per node used
        self._control: dict[tuple[str, int], RedisWire] = {}  # topology reads
        self._slots: list[RedisWire | None] | None = None  # None: topology not read yet
        self._masters: list[tuple[str, int]] = []
        self._known: list[tuple[str, int]] = []  # masters and replicas of the last read
        self._refreshing: asyncio.Task | None = None
        self._last_refresh = float("-inf")
        self._tick: asyncio.TimerHandle | None = None
        self._trailing: asyncio.TimerHandle | None = None  # a read put off by REFRESH_MIN_GAP_S
        self._loop: asyncio.AbstractEventLoop | None = None
        self.refreshes = 0  # topology reads that succeeded (tests, logs)

    # ------------------------------------------------------------------ RedisWire's interface

    @property
    def connected(self) -> bool:
        """Every master of the map has a live connection."""
        return bool(self._masters) and all(
            (w := self._wires.get(a)) is not None and w.connected for a in self._masters)

    def call(self, args: tuple[Any, ...], timeout: float) -> asyncio.Future:
        """The reply, a ReplyError or a Failure of the master serving args' first key; a command
        without a key goes to every master (the first error or failure, else the first reply)."""
        loop = self._loop or self._bind_loop()
        out = loop.create_future()
        # when a redirect gives up: the node's wire waits up to max(timeout, max_wait) for a reply
        deadline = time.perf_counter() + max(timeout, self.max_wait)
        key = first_key(args)
        if key is None:
            self._broadcast(args, out, deadline, timeout)
        else:
            self._send(args, key_slot(key), out, deadline, timeout, 0)
        return out

    def close(self) -> None:
        for handle in (self._tick, self._trailing):
            if handle is not None:
                handle.cancel()
        if self._refreshing is not None:
            self._refreshing.cancel()
        for wire in (*self._wires.values(), *self._control.values()):
            wire.close()
        self._wires.clear()
        self._control.clear()

    # ------------------------------------------------------------------ routing

    def _send(self, args: tuple, slot: int, out: asyncio.Future, deadline: float, timeout: float, redirects: int) -> None:
        """Send to the slot's master with the caller's timeout (what "Redis silent" means to the
        node's wire), never past `deadline` (when the call as a whole gives up)."""
        slots = self._slots
        wire = slots[slot] if slots is not None else None
        if wire is None:
            self._loop.create_task(self._send_after_refresh(args, slot, out, deadline, timeout, redirects))
            return
        left = deadline - time.perf_counter()
        if left <= 0:
            out.set_result(TIMED_OUT)
            return
        wire.call(args, min(timeout, left)).add_done_callback(
            partial(self._result, args, slot, out, deadline, timeout, redirects))

    async def _topology_read(self, force: bool, deadline: float) -> None:
        """Wait (until the deadline at most) for a topology read: the running one, or a new one."""
        task = self._refresh(force=force)
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), max(deadline - time.perf_counter(), 0))
            except asyncio.TimeoutError:
                pass

    async def _send_after_refresh(self, args: tuple, slot: int, out: asyncio.Future, deadline: float, timeout: float,
                                  redirects: int) -> None:
        await self._topology_read(self._slots is None, deadline)
        if out.done():
            return
        if self._slots is None or self._slots[slot] is None:
            out.set_result(UNMAPPED if time.perf_counter() < deadline else TIMED_OUT)
        else:
            self._send(args, slot, out, deadline, timeout, redirects)

    def _result(self, args: tuple, slot: int, out: asyncio.Future, deadline: float, timeout: float, redirects: int,
                fut: asyncio.Future) -> None:
        if out.done():
            return
        reply = fut.result()
        if type(reply) is ReplyError:
            text = str(reply)
            if text.startswith("MOVED ") and redirects < MAX_REDIRECTS:
                _, moved_slot, addr = text.split(" ", 2)
                if self._slots is not None:
                    self._slots[int(moved_slot)] = self._wire(_parse_addr(addr))
                self._refresh()  # more than this slot has probably moved (reshard, failover)
                self._send(args, slot, out, deadline, timeout, redirects + 1)
                return
            if text.startswith("ASK ") and redirects < MAX_REDIRECTS:
                left = deadline - time.perf_counter()
                if left <= 0:
                    out.set_result(TIMED_OUT)
                    return
                wire = self._wire(_parse_addr(text.split(" ", 2)[2]))
                wire.call(("ASKING",), min(timeout, left))  # queued in the same pass: one write with the command
                wire.call(args, min(timeout, left)).add_done_callback(
                    partial(self._result, args, slot, out, deadline, timeout, redirects + 1))
                return
            if text.startswith("CLUSTERDOWN"):
                self._refresh()
        elif type(reply) is Failure and reply.cause in _RECONNECT:
            self._refresh()  # the node may be gone: has a replica taken over?
        out.set_result(reply)

    def _broadcast(self, args: tuple, out: asyncio.Future, deadline: float, timeout: float) -> None:
        """Queued on every master's wire now, in call order: a SCRIPT LOAD issued before an
        EVALSHA (the Guard's NOSCRIPT reload) reaches the EVALSHA's node first."""
        left = deadline - time.perf_counter()
        if self._slots is None or not self._masters:
            self._loop.create_task(self._broadcast_after_refresh(args, out, deadline, timeout))
            return
        if left <= 0:
            out.set_result(TIMED_OUT)
            return
        futures = [self._wire(a).call(args, min(timeout, left)) for a in self._masters]
        waiting = [len(futures)]

        def one_done(_: asyncio.Future) -> None:
            waiting[0] -= 1
            if waiting[0] or out.done():
                return
            replies = [f.result() for f in futures]
            bad = [r for r in replies if isinstance(r, (Failure, ReplyError))]
            out.set_result(bad[0] if bad else replies[0])
            if any(type(r) is Failure and r.cause in _RECONNECT for r in replies):
                self._refresh()

        for f in futures:
            f.add_done_callback(one_done)

    async def _broadcast_after_refresh(self, args: tuple, out: asyncio.Future, deadline: float, timeout: float) -> None:
        await self._topology_read(True, deadline)
        if out.done():
            return
        if self._masters:
            self._broadcast(args, out, deadline, timeout)
        else:
            out.set_result(UNMAPPED if time.perf_counter() < deadline else TIMED_OUT)

    # ------------------------------------------------------------------ topology

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        self._tick = self._loop.call_later(self.refresh_every_s, self._periodic)
        return self._loop

    def _periodic(self) -> None:
        self._refresh()
        self._tick = self._loop.call_later(self.refresh_every_s, self._periodic)

    def _refresh(self, force: bool = False) -> asyncio.Task | None:
        """Start a topology read unless one runs; one asked for less than REFRESH_MIN_GAP_S after
        the last starts when the gap is over (a change is never missed, reads stay rare)."""
        if self._refreshing is not None:
            return self._refreshing
        now = time.monotonic()
        if not force and now - self._last_refresh < REFRESH_MIN_GAP_S:
            if self._trailing is None:
                self._trailing = self._loop.call_later(REFRESH_MIN_GAP_S - (now - self._last_refresh), self._trail)
            return None
        self._last_refresh = now
        self._refreshing = task = self._loop.create_task(self._read_topology())
        task.add_done_callback(self._refreshed)
        return task

    def _trail(self) -> None:
        self._trailing = None
        self._refresh(force=True)

    def _refreshed(self, task: asyncio.Task) -> None:
        self._refreshing = None
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster topology read failed: %r", task.exception())

    async def _read_topology(self) -> bool:
        # Nodes we are connected to first: a dead one costs a connect attempt.
        candidates = list(dict.fromkeys((*self._masters, *self._known, *self._seeds)))
        candidates.sort(key=lambda a: not (a in self._control and self._control[a].connected))
        for addr in candidates:
            wire = self._control.get(addr)
            if wire is None:
                wire = self._control[addr] = RedisWire(self._node_url(addr), self.connect_timeout, self.hang_timeout)
            reply = await wire.call(("CLUSTER", "SLOTS"), max(self.hang_timeout, 0.25))
            if isinstance(reply, list) and reply:
                self._apply(reply, addr)
                return True
            if isinstance(reply, ReplyError):
                log.warning("CLUSTER SLOTS on %s:%d: %s", *addr, reply)
        log.warning("cluster topology: no node answered CLUSTER SLOTS (%d tried)", len(candidates))
        return False

    def _apply(self, reply: list, asked: tuple[str, int]) -> None:
        slots: list[RedisWire | None] = [None] * SLOTS
        masters: list[tuple[str, int]] = []
        known: list[tuple[str, int]] = []
        for lo, hi, master, *replicas in reply:
            addr = _node_addr(master, asked)
            wire = self._wire(addr)
            slots[lo:hi + 1] = [wire] * (hi - lo + 1)
            if addr not in masters:
                masters.append(addr)
            known += [_node_addr(r, asked) for r in replicas]
        changed = masters != self._masters
        self._slots, self._masters = slots, masters
        self._known = list(dict.fromkeys((*masters, *known)))
        for addr in [a for a in self._wires if a not in self._known]:  # nodes that left the cluster
            self._wires.pop(addr).close()
        for addr in [a for a in self._control if a not in self._known and a not in self._seeds]:
            self._control.pop(addr).close()
        self.refreshes += 1
        if changed:
            log.info("cluster topology: masters %s", ", ".join(f"{h}:{p}" for h, p in masters))

    def _wire(self, addr: tuple[str, int]) -> RedisWire:
        wire = self._wires.get(addr)
        if wire is None:
            wire = self._wires[addr] = RedisWire(self._node_url(addr), self.connect_timeout, self.hang_timeout,
                                                 prelude=self._prelude, max_wait=self.max_wait)
            for name, callback in self._hooks.items():
                setattr(wire, name, callback)
        return wire

    def _node_url(self, addr: tuple[str, int]) -> str:
        """The seed URL (scheme, credentials, options) with another node's host and port."""
        u = self._url
        auth = u.netloc.rpartition("@")[0]
        host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
        return urlunsplit(u._replace(netloc=f"{auth + '@' if auth else ''}{host}:{addr[1]}", path="/0"))


def _node_addr(entry: list, asked: tuple[str, int]) -> tuple[str, int]:
    """(host, port) of a CLUSTER SLOTS node entry; an empty or unknown host is the node we asked."""
    host = entry[0] if entry[0] not in ("", "?", None) else asked[0]
    return host, int(entry[1])


def _parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)
