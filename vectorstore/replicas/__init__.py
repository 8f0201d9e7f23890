"""What a process knows of the primary's streaming replicas: reachable, in recovery, how far behind.

The router (vectorstore.replicas.routers) asks :func:`choose` for a replica to read from. Each process
checks a replica at most every ``REPLICA_CHECK_SECONDS`` (one small query on the replica, one on the primary,
on the connections the request already holds) and skips one that failed or lags beyond
``REPLICA_MAX_LAG`` for ``REPLICA_SKIP_SECONDS``. Read-your-writes marks (where a client's last write
ended in the primary's WAL) are written and read here too.

Lag: bytes are the primary's WAL position less the replica's replay position. Seconds are an upper
bound, so that a replica is never read beyond REPLICA_MAX_LAG (give or take REPLICA_CHECK_SECONDS,
for which a process trusts a check): 0 when the replica has replayed the primary's position at this
check; else the smaller of two bounds: the time since the last of this process's samples of the
primary's position (one per check) that the replica has (below), and the time since the last
transaction it replayed committed (``pg_last_xact_replay_timestamp()``). The first is tight while
reads come (checks every second); the second alone would count a whole idle spell as lag when the
first write after it is in flight, as would the first after a long quiet spell (then reads go to the
primary for REPLICA_SKIP_SECONDS: safe).

A replica "has" a sample of the primary when it has replayed that WAL position, or when its snapshot
is as new as the primary's was (``pg_current_snapshot()``: every transaction completed then is completed
there), whichever comes first. WAL is not all transactions: the first reads of freshly loaded rows set
hint bits, which under data checksums (PostgreSQL 18's default) writes full-page images, and a record
that spans a page may sit half-written on the primary (its WAL writer writes whole pages) where no
replica can replay it; by position alone such a replica lags, while its data is the primary's, and a
fresh server sent its first searches to the primary.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import psycopg
from django.db import DatabaseError, InterfaceError, OperationalError, connections

from vectorstore import conf

# A health check that fails in any way leaves the replica out.
UNAVAILABLE = (DatabaseError, psycopg.Error)
# Errors of a read that mean "this database could not answer", not "this query is wrong": a
# connection refused or cut, a server shutting down, a query cancelled by a recovery conflict. Django
# wraps psycopg's; the raw ones come from statements run on psycopg's connection directly. A bad
# query is not run again elsewhere, and does not take a replica out of service.
LOST = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


class Position(NamedTuple):
    """Where a server is: its WAL position (the primary's written, a replica's replayed) and its snapshot's
    bounds (the oldest transaction in progress, one past the newest completed)."""

    lsn: int
    xmin: int
    xmax: int

    @classmethod
    def of(cls, lsn: int, snapshot: str) -> Position:
        xmin, xmax, _ = snapshot.split(":", 2)
        return cls(lsn, int(xmin), int(xmax))

    def has(self, sample: Position) -> bool:
        """Whether a replica here has what the primary had at ``sample``: that WAL replayed, or every
        transaction completed then completed here (a standby's snapshot lists no transaction in progress
        below its xmax, so its xmin stands in: one left open here lowers it)."""
        return self.lsn >= sample.lsn or (self.xmax >= sample.xmax and self.xmin >= sample.xmin)


@dataclass
class ReplicaHealth:
    """One check of one replica."""

    name: str
    reachable: bool
    in_recovery: bool | None = None
    replay_lsn: int | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    error: str | None = None
    checked: float = 0.0  # time.monotonic() of the check

    @property
    def reason(self) -> str:
        """Why the replica takes no reads (for a response's X-Vectorstore-Read-Reason)."""
        if not self.reachable:
            return f"unreachable ({self.name}: {self.error})"
        if not self.in_recovery:
            return f"not a replica ({self.name})"
        if self.lag_seconds is None:
            return f"lag unknown ({self.name})"
        return f"lag ({self.name}: {self.lag_seconds:.1f} s behind)"

    @property
    def usable(self) -> bool:
        """Reachable, a replica, and behind by no more than REPLICA_MAX_LAG."""
        return (
            self.reachable
            and bool(self.in_recovery)
            and self.lag_seconds is not None
            and self.lag_seconds <= conf.replica_max_lag()
        )

    def report(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("checked")
        data.pop("replay_lsn")
        return data


_lock = threading.Lock()
_health: dict[str, ReplicaHealth] = {}
_skip_until: dict[str, float] = {}
# (time.monotonic(), the primary's Position) at this process's recent checks, oldest first.
_primary_samples: deque[tuple[float, Position]] = deque(maxlen=512)


def configured() -> list[str]:
    """The replicas' database aliases (``VECTORSTORE["REPLICAS"]``)."""
    return conf.replicas()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _close(alias: str) -> None:
    with contextlib.suppress(*UNAVAILABLE):
        connections[alias].close()


def primary_position(using: str = "default") -> Position:
    """The primary's current WAL position (in bytes from 0/0) and snapshot."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint, pg_current_snapshot()::text")
        return Position.of(*cursor.fetchone())


def _lag_seconds(now: float, replica: Position, replayed_xact_age: float | None) -> float | None:
    """At most how long ago the primary was where the replica is not yet (an upper bound, so that a
    replica is never read beyond REPLICA_MAX_LAG; see the module's docstring)."""
    with _lock:
        samples = list(_primary_samples)
    missing = [i for i, (_, sample) in enumerate(samples) if not replica.has(sample)]
    if not missing:
        return 0.0
    bounds = [] if replayed_xact_age is None else [max(0.0, float(replayed_xact_age))]
    if missing[0] > 0:
        # It has replayed the sample before the first it lacks: what it lacks is younger than that.
        bounds.append(now - samples[missing[0] - 1][0])
    return min(bounds) if bounds else None


def check(alias: str) -> ReplicaHealth:
    """Ask a replica now (and the primary for its position); remember the answer."""
    now = time.monotonic()
    try:
        primary = primary_position()
        with _lock:
            _primary_samples.append((now, primary))
    except UNAVAILABLE as exc:
        # Without the primary's position the lag is unknown: the replica takes no reads meanwhile
        # (nor could writes be made, so read-your-writes has nothing to wait for).
        health = ReplicaHealth(alias, reachable=False, error=f"primary: {first_line(exc)}", checked=now)
    else:
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute(
                    "SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint,"
                    " extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()),"
                    " pg_current_snapshot()::text"
                )
                in_recovery, replay, replayed_xact_age, snapshot = cursor.fetchone()
        except UNAVAILABLE as exc:
            _close(alias)
            health = ReplicaHealth(alias, reachable=False, error=first_line(exc), checked=now)
        else:
            here = None if replay is None else Position.of(replay, snapshot)
            lag = None if here is None else _lag_seconds(now, here, replayed_xact_age)
            health = ReplicaHealth(
                alias,
                reachable=True,
                in_recovery=in_recovery,
                replay_lsn=replay,
                lag_bytes=None if replay is None else max(0, primary.lsn - replay),
                lag_seconds=lag,
                error=None if in_recovery else "not in recovery: a primary, not a replica",
                checked=now,
            )
    with _lock:
        _health[alias] = health
        if health.usable:
            _skip_until.pop(alias, None)
        else:
            _skip_until[alias] = now + conf.replica_skip_seconds()
    return health


def failed(alias: str, exc: BaseException) -> None:
    """A query on the replica failed: skip it for REPLICA_SKIP_SECONDS, drop this thread's connection."""
    _close(alias)
    now = time.monotonic()
    with _lock:
        _health[alias] = ReplicaHealth(alias, reachable=False, error=first_line(exc), checked=now)
        _skip_until[alias] = now + conf.replica_skip_seconds()


def _replayed(alias: str) -> int | None:
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint")
            return cursor.fetchone()[0]
    except UNAVAILABLE as exc:
        failed(alias, exc)
        return None


def choose(min_lsn: int | None = None) -> str | None:
    """A replica to read from: usable, not skipped, and (given ``min_lsn``) replayed at least that far.
    None when there is none: the caller reads from the primary."""
    return pick(min_lsn)[0]


def pick(min_lsn: int | None = None) -> tuple[str | None, str | None]:
    """``choose``, with why the primary answers where no replica does (read-your-writes, lag,
    unreachable, skipped after a failure): (alias, None) or (None, reason)."""
    now = time.monotonic()
    candidates, reasons = [], []
    for alias in configured():
        with _lock:
            skipped = _skip_until.get(alias, 0.0) > now
            health = _health.get(alias)
        if skipped:
            why = health.reason if health is not None and not health.usable else "a recent failure"
            reasons.append(f"{why}, skipped for {conf.replica_skip_seconds():g} s")
            continue
        if health is None or now - health.checked > conf.replica_check_seconds():
            health = check(alias)
        if not health.usable:
            reasons.append(health.reason)
            continue
        if min_lsn is not None and (health.replay_lsn or 0) < min_lsn:
            # What was seen a moment ago is behind this client's write; the replica may have replayed it
            # since (usually within a millisecond): ask it once.
            replayed = _replayed(alias)
            if replayed is None or replayed < min_lsn:
                reasons.append(f"read-your-writes ({alias} has not replayed this client's last write)")
                continue
        candidates.append(alias)
    if candidates:
        return random.choice(candidates), None
    return None, "; ".join(reasons) or "no replica"


def report() -> list[dict[str, Any]]:
    """Each replica checked now, for /api/health: reachable, in recovery, lag, and whether it takes reads."""
    out = []
    for alias in configured():
        health = check(alias)
        out.append({**health.report(), "serving": health.usable})
    return out


def forget() -> None:
    """Drop what this process saw of its replicas (tests)."""
    with _lock:
        _health.clear()
        _skip_until.clear()
        _primary_samples.clear()


# --------------------------------------------------------------------------- read-your-writes marks


def mark_write(client: str, using: str = "default") -> None:
    """Record where the primary's WAL is now, after ``client``'s write committed."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "INSERT INTO vectorstore_writemark (client, lsn, written_at)"
            " VALUES (%s, (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint, now())"
            " ON CONFLICT (client) DO UPDATE SET lsn = EXCLUDED.lsn, written_at = EXCLUDED.written_at",
            [client],
        )
        if random.random() < 0.01:
            # Marks of clients gone quiet: a replica a day behind takes no reads anyway (REPLICA_MAX_LAG).
            cursor.execute("DELETE FROM vectorstore_writemark WHERE written_at < now() - interval '1 day'")


def written_lsn(client: str, using: str = "default") -> int | None:
    """Where ``client``'s last write ended in the primary's WAL, if it wrote."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT lsn FROM vectorstore_writemark WHERE client = %s", [client])
        row = cursor.fetchone()
    return row[0] if row else None
