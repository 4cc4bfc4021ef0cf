"""Batched Redis commands for the rater's per-event paths, on a redis-py client's connections.

The settle.lua runs, the wallet reads and the stream reads/acks of every batch go through here:
the commands packed by hiredis into one write, the replies read back by the connection's own
parser. redis-py's pipeline costs ~25 µs of client CPU per command (its Python packer ~12 µs,
then a response callback and a timeout context per reply); this ~4, about what a raw socket
costs. The connections are redis-py's (its pool, AUTH, TLS, reconnects); only the packing and
the reading are ours.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence

import hiredis
from redis.exceptions import NoScriptError, ResponseError

import lua


def supported(redis) -> bool:
    """A client whose pool we can borrow connections from (RedisCluster has none: callers use
    its redis-py API instead)."""
    return getattr(redis, "connection_pool", None) is not None


async def execute(redis, commands: Sequence[tuple]) -> list:
    """Run `commands` (tuples of str/bytes/int) in one write on one pooled connection.

    Returns their replies in order, unparsed (bytes, ints, lists; RESP3 maps as dicts); an error
    reply is returned as its exception (e.g. NoScriptError), not raised, as redis-py's
    pipeline(raise_on_error=False) does. Connection failures raise."""
    packed = b"".join([hiredis.pack_command(c) for c in commands])
    pool = redis.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(packed)
        return await _read_replies(conn, len(commands))
    except BaseException:
        await conn.disconnect()  # replies may be left unread: never hand this connection out again
        raise
    finally:
        await pool.release(conn)


async def run(redis, commands: Sequence[tuple]) -> list:
    """`execute` where the client allows it (else a redis-py pipeline: RedisCluster), raising the
    first error reply."""
    if supported(redis):
        replies = await execute(redis, commands)
    else:
        async with redis.pipeline(transaction=False) as p:
            for c in commands:
                p.execute_command(*c)
            replies = await p.execute(raise_on_error=False)
    for r in replies:
        if isinstance(r, Exception):
            raise r
    return replies


async def _read_replies(conn, n: int) -> list:
    """n replies from a redis-py asyncio connection.

    Connection.read_response costs ~7 µs a reply (a timeout context and its checks each); the
    connection's parser, which read_response calls, ~0.5, under one socket timeout for the batch.
    The parser returns error replies instead of raising them, skips RESP3 push messages and
    raises on a broken connection, in every redis-py parser."""
    parser = getattr(conn, "_parser", None)
    if parser is None:  # not the connection class we know: the public way
        replies = []
        for _ in range(n):
            try:
                replies.append(await conn.read_response())
            except ResponseError as e:
                replies.append(e)
        return replies
    async with asyncio.timeout(conn.socket_timeout):
        return [await parser.read_response() for _ in range(n)]


async def eval_many(redis, script: lua.Script, calls: Sequence[tuple[list, list]]) -> list:
    """EVALSHA each (keys, args) in one pipeline; NOSCRIPT (a restarted or new Redis) loads the
    script and re-runs only the calls that failed with it, which never ran."""
    replies = await _pipeline(redis, script.sha, calls)
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        await redis.script_load(script.source)
        again = await _pipeline(redis, script.sha, [calls[i] for i in missing])
        for i, r in zip(missing, again):
            replies[i] = r
    for r in replies:
        if isinstance(r, Exception):
            raise r
    return replies


async def _pipeline(redis, sha: str, calls: Sequence[tuple[list, list]]) -> list:
    """The EVALSHA replies in order, error replies as their exceptions."""
    if supported(redis):
        return await execute(redis, [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls])
    async with redis.pipeline(transaction=False) as p:
        for keys, args in calls:
            p.execute_command("EVALSHA", sha, len(keys), *keys, *args)  # redis-py's cluster pipeline refuses .evalsha()
        return await p.execute(raise_on_error=False)
