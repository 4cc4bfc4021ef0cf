"""The enforcer's write-ahead spool: every usage event on the local disk until the bus has it durably.

Why: the embedded bus is a Redis stream on a Redis that may restart empty. An event that got its
202 must survive that, and the loss of the enforcer's own server too. So an event goes, at the
same time, to the bus (a copy off this server) and to this log (a copy that outlives the bus's
Redis), and the 202 waits for both: for the log's fsync always, for the bus unless the bus is
down (then `spooled`; the log replays it in order when the bus is back).

Log entries are dropped only once the bus has them durably: on Kafka (acks=all, replicated) when
acknowledged; on Redis Streams when every consumer group has consumed them (id below the group's
ack floor) in the incarnation (epoch) of the stream they were published to, and the stream still
holds this producer's high-water mark. A Redis that came back empty shows a new epoch; a failover
to a replica that missed the stream's tail shows a lower high-water mark: either way everything
still in the log is published again, in order. Events the rater has already rated come back as
duplicates, which it drops by event id.

Files: one JSON line per event, in segment files `<slot>.wal.<n>`. A process claims a slot, the
first of `path`, `path.1`, ... whose lock file it can flock; at start it takes over the segments
of its own slot and of every unlocked slot (processes that are gone) and publishes them again.
A segment is closed after about a second (or 4 MiB) and deleted whole once consumed, so the disk
holds what is not yet consumed plus about a second, and a restart re-sends about that much.

Writes are group commits: the events of all requests waiting are written and fsync'd at once,
while the same batch is published, in one cycle at a time (so the log and the bus see one order).
Decision events (one per check) are best effort: they go to the log only when the bus fails.
"""
from __future__ import annotations

import asyncio
import fcntl
import glob
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from tollgate.bus import BusUnavailable, EventBus, Receipt

log = logging.getLogger("tollgate.spool")
_READ_CHUNK = 1 << 20
SEGMENT_BYTES = 4 << 20


@dataclass(slots=True)
class Segment:
    path: str
    first: int  # sequence number of its first event
    count: int = 0  # events written and fsync'd
    size: int = 0  # their bytes
    created: float = field(default_factory=time.monotonic)
    last_id: tuple[int, int] | None = None  # entry id of the latest publish of its events, this epoch

    @property
    def end(self) -> int:
        return self.first + self.count


class Spool:
    """The log of one process: segments of numbered events, `published` the first not yet on the bus."""

    def __init__(self, path: str, segment_bytes: int = SEGMENT_BYTES):
        self.base = path
        self.path, self._lock_fd = _claim(path)
        self.segment_bytes = segment_bytes
        self.dir = os.path.dirname(os.path.abspath(self.path))
        self.segments: list[Segment] = []
        self._fd: int | None = None  # the last segment's, open for appending
        self._next_no = 0
        self._cursor: tuple[int, Segment, int] | None = None  # (seq, its segment, its byte offset)
        self._take_over()
        self.next_seq = self.segments[-1].end if self.segments else 0
        self._end = self.next_seq  # after the last durable event
        self.published = 0  # every event below was published in the bus's current epoch (see SpooledPublisher)

    @property
    def first_seq(self) -> int:
        return self.segments[0].first if self.segments else self.next_seq

    @property
    def depth(self) -> int:
        """Events not yet on the bus."""
        return self.next_seq - self.published

    @property
    def unconfirmed(self) -> int:
        """Events kept until the bus has them durably."""
        return self.next_seq - self.first_seq

    # ------------------------------------------------------------------ writing (one writer)

    def write_sync(self, data: bytes, n: int) -> Segment:
        """Append n lines and fsync (in a thread); the segment they went to. Raises OSError, with
        the segment cut back to where it was."""
        seg = self.segments[-1] if self.segments and self._fd is not None else None
        if seg is None or seg.size >= self.segment_bytes:
            seg = self.roll_sync()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, seg.size)
            except OSError:
                pass
            os.close(self._fd)  # after a failed fsync the file's state is unknown: a new segment next
            self._fd = None
            raise
        return seg

    def commit(self, seg: Segment, data_len: int, n: int) -> None:
        """In the event loop, after write_sync: the lines are durable."""
        seg.count += n
        seg.size += data_len
        self._end = seg.end

    def roll_sync(self) -> Segment:
        """Close the current segment and start a new one (its directory entry fsync'd)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        path = f"{self.path}.wal.{self._next_no:012d}"
        self._next_no += 1
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        _fsync_dir(self.dir)
        seg = Segment(path, self._end)
        self.segments.append(seg)
        return seg

    @property
    def active(self) -> Segment | None:
        return self.segments[-1] if self.segments and self._fd is not None else None

    # ------------------------------------------------------------------ reading and dropping

    def read_sync(self, seq: int, limit: int) -> tuple[list[bytes], Segment | None]:
        """Up to `limit` durable lines from event `seq`, all of one segment (empty at the end)."""
        seg = next((s for s in self.segments if s.first <= seq < s.end), None)
        if seg is None:
            return [], None
        cur = self._cursor
        if cur is not None and cur[0] == seq and cur[1] is seg:
            offset = cur[2]
        else:
            offset = _skip_lines(seg.path, seq - seg.first)
        lines, end = _read_lines(seg.path, offset, min(limit, seg.end - seq), seg.size)
        self._cursor = (seq + len(lines), seg, end)
        return lines, seg

    def drop(self, segments: list[Segment]) -> None:
        """Forget consumed segments (a prefix of the list, never the one being written); the
        files go with unlink_sync."""
        for seg in segments:
            self.segments.remove(seg)
        self._cursor = None

    @staticmethod
    def unlink_sync(segments: list[Segment]) -> None:
        for seg in segments:
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        os.close(self._lock_fd)  # also releases the slot

    # ------------------------------------------------------------------ start-up

    def _take_over(self) -> None:
        """Our slot's segments (a previous process on it), then those of every unlocked slot."""
        own = _segments_of(self.path)
        self._next_no = (max(own) + 1) if own else 0
        for no in sorted(own):
            self._adopt(own[no], rename=False)
        legacy = _legacy_lines(self._lock_fd)  # a spool written before segments existed
        if legacy:
            self._adopt_bytes(legacy)
            os.ftruncate(self._lock_fd, 0)
            os.fsync(self._lock_fd)
        for slot in _slots(self.base):
            if slot == self.path:
                continue
            fd = _lock(slot)
            if fd is None:
                continue  # a live process owns it
            try:
                moved = 0
                for no, p in sorted(_segments_of(slot).items()):
                    self._adopt(p)
                    moved += 1
                legacy = _legacy_lines(fd)
                if legacy:
                    self._adopt_bytes(legacy)
                    os.ftruncate(fd, 0)
                    os.fsync(fd)
                    moved += 1
                if moved:
                    log.warning("spool: took over %d segments of %s", moved, slot)
            finally:
                os.close(fd)
        if self.segments:
            _fsync_dir(self.dir)

    def _adopt(self, path: str, rename: bool = True) -> None:
        """Rename a segment into our slot (atomic: after a crash it is in one slot or the other)."""
        fd = os.open(path, os.O_RDWR)
        try:
            _drop_torn_tail(fd)
            size = os.fstat(fd).st_size
            count = _count_lines(fd)
        finally:
            os.close(fd)
        if not count:
            os.unlink(path)
            return
        target = path
        if rename:
            target = f"{self.path}.wal.{self._next_no:012d}"
            self._next_no += 1
            os.rename(path, target)
        first = self.segments[-1].end if self.segments else 0
        self.segments.append(Segment(target, first, count, size))

    def _adopt_bytes(self, data: bytes) -> None:
        target = f"{self.path}.wal.{self._next_no:012d}"
        self._next_no += 1
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._adopt(target, rename=False)


class _FileThread:
    """One thread for the spool's writes: handing a job to it costs about half of what
    asyncio.to_thread does (write + fsync of one line, measured: 93 µs of CPU against 181; the
    fsync alone 88), and at 1,000 events/s most group commits are of one event."""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, fn: Callable, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="tollgate-spool", daemon=True)
            self._thread.start()
        self._jobs.put((loop, fut, fn, args))
        return await fut

    def _serve(self) -> None:
        while True:
            loop, fut, fn, args = self._jobs.get()
            try:
                outcome = (True, fn(*args))
            except BaseException as e:  # noqa: BLE001  (handed to the waiting coroutine)
                outcome = (False, e)
            try:
                loop.call_soon_threadsafe(_settle, fut, outcome)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more


def _settle(fut: asyncio.Future, outcome: tuple[bool, Any]) -> None:
    if fut.done():
        return  # the waiter was cancelled
    ok, value = outcome
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class _Pending:
    __slots__ = ("events", "durable", "fut")

    def __init__(self, events: list[dict[str, Any]], durable: bool, fut: asyncio.Future):
        self.events, self.durable, self.fut = events, durable, fut


class SpooledPublisher:
    """The bus with the write-ahead spool beside it.

    `publish(events)` (usage): True = on the bus and in the log; False = in the log only (the bus
    failed; replayed later); raises OSError if the log could not take them. `publish(events,
    durable=False)` (decisions): to the bus, to the log only if the bus fails.

    While anything in the log is not on the bus yet, new events go to the log only, so the replay
    keeps their order. `run()` is the background part: replay, confirmation, trimming.
    """

    def __init__(self, bus: EventBus, spool: Spool, on_depth: Callable[[int], None] | None = None,
                 confirm_every_s: float = 0.5, roll_after_s: float = 1.0, replay_batch: int = 500):
        self.bus = bus
        self.spool = spool
        self._on_depth = on_depth or (lambda n: None)
        self.confirm_every_s = confirm_every_s
        self.roll_after_s = roll_after_s
        self.replay_batch = replay_batch
        self.epoch: bytes | None = None  # the stream incarnation `spool.published` refers to
        self._mark: tuple[int, int] | None = None  # the id of our latest entry the bus acknowledged, this epoch
        self._gen = 0  # bumped when the bus lost data: results of publishes begun before are void
        self._direct = spool.depth == 0
        self._queue: list[_Pending] = []
        self._cycler: asyncio.Task | None = None
        self._file_lock = asyncio.Lock()  # one writer of the log: the cycles, or a roll
        self._files = _FileThread()
        self._wake_replay = asyncio.Event()
        if spool.depth:
            log.warning("spool %s: %d events from before this process will be published again", spool.path, spool.depth)

    # ------------------------------------------------------------------ the request path

    async def publish(self, events: list[dict[str, Any]], durable: bool = True) -> bool:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(events, durable, fut))
        if self._cycler is None:
            self._cycler = asyncio.ensure_future(self._cycles())
        return await fut

    async def _cycles(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await self._cycle(batch)
                except BaseException as e:  # never leave a caller waiting
                    for p in batch:
                        if not p.fut.done():
                            p.fut.set_exception(e if isinstance(e, Exception) else OSError(str(e)))
                    if not isinstance(e, Exception):
                        raise
        finally:
            self._cycler = None

    async def _cycle(self, batch: list[_Pending]) -> None:
        if not self._direct:  # behind a backlog: log only, the replay publishes in order
            await self._log_only(batch)
            return
        gen, mark = self._gen, self._mark
        durable = [e for p in batch if p.durable for e in p.events]
        everything = [e for p in batch for e in p.events]
        written, published = await asyncio.gather(self._write(durable), self.bus.publish(everything),
                                                  return_exceptions=True)
        on_bus = not isinstance(published, BaseException)
        if isinstance(written, BaseException):
            log.error("spool %s: write failed: %s", self.spool.path, written)
        elif on_bus:
            self._published(gen, mark, written, published)
        if not on_bus:
            if not isinstance(published, BusUnavailable):
                log.error("publishing %d events failed unexpectedly: %r", len(everything), published)
            else:
                log.warning("bus unavailable, spooling: %s", published)
            self._to_backlog()
            best_effort = [p for p in batch if not p.durable]
            if best_effort:
                await self._log_only(best_effort)
        for p in batch:
            if p.fut.done():
                continue
            if p.durable and isinstance(written, BaseException):
                p.fut.set_exception(OSError(f"spool {self.spool.path}: {written}"))
            else:
                p.fut.set_result(on_bus)

    async def _log_only(self, batch: list[_Pending]) -> None:
        events = [e for p in batch for e in p.events]
        try:
            await self._write(events)
        except OSError as e:
            for p in batch:
                if not p.fut.done():
                    p.fut.set_exception(OSError(f"spool {self.spool.path}: {e}"))
            return
        self._to_backlog()
        for p in batch:
            if not p.fut.done():
                p.fut.set_result(False)

    async def _write(self, events: list[dict[str, Any]]) -> tuple[int, int, Any] | None:
        """Log events durably; (first seq, count, segment), None for no events. Numbers are
        taken before the write starts, so the replay never passes a write in progress."""
        if not events:
            return None
        data = b"".join([orjson.dumps(e) + b"\n" for e in events])
        async with self._file_lock:
            first = self.spool.next_seq
            self.spool.next_seq += len(events)
            try:
                seg = await self._files.run(self.spool.write_sync, data, len(events))
            except BaseException:
                self.spool.next_seq = first  # nothing after us was numbered: we hold the lock
                raise
            self.spool.commit(seg, len(data), len(events))
        if not self._direct:
            self._wake_replay.set()
        self._on_depth(self.spool.depth)
        return first, len(events), seg

    # ------------------------------------------------------------------ what the bus confirmed

    def _receipt_ok(self, gen: int, mark: tuple[int, int] | None, receipt: Receipt | None, seen_by: str) -> bool:
        """False if the receipt shows that the bus lost what we published before (then handled).
        `gen`, `mark`: as they were when the publish was sent."""
        if receipt is None:
            return True  # durable on the ack
        if gen != self._gen:
            return False  # sent before a loss was handled: void (the next publish or confirmation judges)
        if self.epoch is not None and receipt.epoch != self.epoch:
            self._bus_lost(receipt.epoch, f"{seen_by}: a new epoch")
        elif mark is not None and (receipt.before is None or receipt.before < mark):
            self._bus_lost(receipt.epoch, f"{seen_by}: the stream lost its tail")
        else:
            self.epoch = receipt.epoch
            if self._mark is None or receipt.last_id > self._mark:
                self._mark = receipt.last_id
            return True
        self._mark = receipt.last_id  # what the bus holds for us now
        return False

    def _published(self, gen: int, mark: tuple[int, int] | None, written: tuple[int, int, Segment] | None,
                   receipt: Receipt | None) -> None:
        """Events [first, first + n) of `seg` are on the bus (receipt: where)."""
        if not self._receipt_ok(gen, mark, receipt, "a publish"):
            return
        if written is None or gen != self._gen:
            return
        first, n, seg = written
        if self.spool.published != first:
            return  # behind a backlog meanwhile: the replay publishes these again
        self.spool.published = first + n
        if receipt is not None:
            seg.last_id = receipt.last_id
        self._on_depth(self.spool.depth)

    def _to_backlog(self) -> None:
        if self.spool.depth:
            self._direct = False
            self._wake_replay.set()
            self._on_depth(self.spool.depth)

    def _bus_lost(self, epoch: bytes | None, seen_by: str) -> None:
        """The bus lost what we published: everything in the log goes out again, in order."""
        log.warning("the event stream lost data (seen by %s): publishing the %d events of the spool again",
                    seen_by, self.spool.unconfirmed)
        self._gen += 1
        self.epoch = epoch
        self._mark = None
        self.spool.published = self.spool.first_seq
        for seg in self.spool.segments:
            seg.last_id = None
        self._to_backlog()

    # ------------------------------------------------------------------ background

    async def run(self) -> None:
        """Replay the backlog and trim what the bus has consumed, until cancelled."""
        await asyncio.gather(self._replay_loop(), self._confirm_loop())

    async def _replay_loop(self, min_wait: float = 0.1, max_wait: float = 2.0) -> None:
        wait = min_wait
        while True:
            if not self._direct:
                try:
                    await self.replay()
                    wait = min_wait
                except BusUnavailable as e:
                    log.debug("replay: bus unavailable: %s", e)
                    wait = min(wait * 2, max_wait)
                except Exception:  # noqa: BLE001  (a damaged segment, a bug: keep trying, loudly)
                    log.exception("spool %s: replay failed", self.spool.path)
                    wait = max_wait
            self._wake_replay.clear()
            try:
                await asyncio.wait_for(self._wake_replay.wait(), None if self._direct else wait)
            except asyncio.TimeoutError:
                pass

    async def replay(self) -> int:
        """Publish the backlog in order, up to what is written; raises BusUnavailable, keeping its place."""
        sent = 0
        while True:
            seq, gen, mark = self.spool.published, self._gen, self._mark
            if seq >= self.spool.next_seq:
                self._direct = True  # no await since the check: nothing new slipped in behind it
                self._on_depth(0)
                return sent
            lines, seg = await asyncio.to_thread(self.spool.read_sync, seq, self.replay_batch)
            if not lines:
                return sent  # the rest is being written; the write wakes us
            events = []
            for line in lines:
                try:
                    events.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    log.error("spool %s: dropping an unreadable line: %r", seg.path, line[:200])
            receipt = await self.bus.publish(events)
            ok = self._receipt_ok(gen, mark, receipt, "the replay")
            if not ok and self._gen == gen + 1 and seq == self.spool.first_seq:
                ok = True  # this batch found the loss and is the log's start: the new stream begins with it
            if not ok or self.spool.published != seq:
                continue
            self.spool.published = seq + len(lines)
            if receipt is not None:
                seg.last_id = receipt.last_id
            sent += len(events)
            self._on_depth(self.spool.depth)

    async def _confirm_loop(self) -> None:
        while True:
            await asyncio.sleep(self.confirm_every_s)
            try:
                await self.confirm()
            except BusUnavailable as e:
                log.debug("confirm: bus unavailable: %s", e)
            except Exception:  # noqa: BLE001  (the next round tries again)
                log.exception("spool %s: confirmation failed", self.spool.path)

    async def finish(self, timeout: float = 2.0) -> None:
        """At a graceful stop: give the consumers up to `timeout` to take what is left, so that
        the next process on this slot has little to publish again (and the rater few duplicates)."""
        deadline = time.monotonic() + timeout
        while self.spool.unconfirmed and time.monotonic() < deadline:
            try:
                if not self.bus.durable_on_ack and not (await self.bus.floor()).groups:
                    return  # no consumer group: nobody will take anything
                await self.confirm(roll_now=True)
            except BusUnavailable:
                return
            if self.spool.unconfirmed:
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    async def confirm(self, roll_now: bool = False) -> int:
        """Drop the segments the bus has durably; returns how many events that freed."""
        spool = self.spool
        gen, mark = self._gen, self._mark
        if self.bus.durable_on_ack:
            done = lambda seg: True  # noqa: E731  (acknowledged = durable)
        else:
            floor = await self.bus.floor()
            if gen != self._gen:
                return 0
            if self.epoch is not None and floor.epoch != self.epoch:
                self._bus_lost(floor.epoch, "the confirmation: a new epoch")
                return 0
            if mark is not None and (floor.mark is None or floor.mark < mark):
                self._bus_lost(floor.epoch, "the confirmation: the stream lost its tail")
                return 0
            if self.epoch is None:
                return 0  # nothing of ours was published in a known incarnation yet
            done = lambda seg: seg.last_id is not None and floor.consumed(seg.last_id)  # noqa: E731
        active = spool.active
        gone = []
        for seg in spool.segments:
            if seg is active or seg.end > spool.published or not done(seg):
                break
            gone.append(seg)
        if gone:
            spool.drop(gone)
            await asyncio.to_thread(spool.unlink_sync, gone)
        if active is not None and active.count and (roll_now or time.monotonic() - active.created >= self.roll_after_s):
            async with self._file_lock:  # close it, so that it can go once consumed
                if spool.active is active:
                    await self._files.run(spool.roll_sync)
        return sum(s.count for s in gone)


# --------------------------------------------------------------------------- file helpers


def _claim(base: str) -> tuple[str, int]:
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    for i in range(1024):
        path = base if i == 0 else f"{base}.{i}"
        fd = _lock(path)
        if fd is not None:
            return path, fd
    raise RuntimeError(f"spool: no free slot next to {base}")


def _lock(path: str) -> int | None:
    """The slot's lock file, flocked; None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _slots(base: str) -> list[str]:
    """Every slot that has a lock file or segments: `base`, `base.1`, ..."""
    found = {base} if os.path.exists(base) else set()
    for p in glob.glob(glob.escape(base) + ".*"):
        rest = p[len(base) + 1:]
        if rest.isdigit():
            found.add(p)
        elif ".wal." in p:
            slot = p.rsplit(".wal.", 1)[0]
            if slot == base or slot[len(base) + 1:].isdigit():
                found.add(slot)
    return sorted(found)


def _segments_of(slot: str) -> dict[int, str]:
    out = {}
    for p in glob.glob(glob.escape(slot) + ".wal.*"):
        no = p.rsplit(".wal.", 1)[1]
        if no.isdigit():
            out[int(no)] = p
    return out


def _legacy_lines(fd: int) -> bytes:
    """Complete lines left in a slot file by the spool of an older version."""
    _drop_torn_tail(fd)
    chunks, pos = [], 0
    while chunk := os.pread(fd, _READ_CHUNK, pos):
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _drop_torn_tail(fd: int) -> None:
    """A line without its newline was cut by a crash before it was acknowledged: drop it."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        i = os.pread(fd, pos - start, start).rfind(b"\n")
        if i >= 0:
            os.ftruncate(fd, start + i + 1)
            return
        pos = start
    os.ftruncate(fd, 0)


def _count_lines(fd: int) -> int:
    n, pos = 0, 0
    while chunk := os.pread(fd, _READ_CHUNK, pos):
        n += chunk.count(b"\n")
        pos += len(chunk)
    return n


def _skip_lines(path: str, n: int) -> int:
    """The byte offset after the first n lines of a file."""
    if n == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while chunk := os.pread(fd, _READ_CHUNK, pos):
            i = -1
            for _ in range(n):
                i = chunk.find(b"\n", i + 1)
                if i < 0:
                    break
                n -= 1
            if n == 0:
                return pos + i + 1
            pos += len(chunk)
        raise OSError(f"{path}: fewer lines than expected")
    finally:
        os.close(fd)


def _read_lines(path: str, pos: int, limit: int, end: int) -> tuple[list[bytes], int]:
    """Up to `limit` lines from byte `pos`, not past byte `end`; the lines and the offset after them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        lines: list[bytes] = []
        buf = b""
        while len(lines) < limit and pos + len(buf) < end:
            chunk = os.pread(fd, min(_READ_CHUNK, end - pos - len(buf)), pos + len(buf))
            if not chunk:
                break
            buf += chunk
            parts = buf.split(b"\n")
            complete = parts[:-1][: limit - len(lines)]
            lines.extend(complete)
            consumed = sum(len(p) + 1 for p in complete)
            pos += consumed
            buf = buf[consumed:]
        return lines, pos
    finally:
        os.close(fd)
