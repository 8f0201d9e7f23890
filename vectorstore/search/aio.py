"""Search statements on psycopg's async connections: a pool per database and event loop, and the same
statements as ``statements.run`` sent in the same one pipelined round trip.

Django's async ORM runs each query on its one sync thread (``sync_to_async``): it has no async
connection to lend. An async search here takes a connection from psycopg_pool's
``AsyncConnectionPool`` made with the parameters Django connects with (``get_connection_params``: the
same adapters, so rows convert as the ORM's do; the same time zone and role), so a search in flight
holds no thread. Each pool belongs to the event loop it was made on (an asyncio connection cannot move
between loops); ``aclose()`` closes the running loop's pools, and those of loops that have ended are
closed when the next pool is made.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
from django.db import connections
from pgvector.psycopg import register_vector_async
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from vectorstore import conf, pg
from vectorstore.search.statements import Statement, pipelined

APPLICATION_NAME = "vectorstore async"

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncConnectionPool]] = (
    weakref.WeakKeyDictionary()
)


def _configure(using: str) -> Any:
    wrapper = connections[using]
    timezone_name = wrapper.timezone_name
    role = wrapper.settings_dict["OPTIONS"].get("assume_role")

    async def configure(conn: psycopg.AsyncConnection) -> None:
        await register_vector_async(conn)
        pg.register_encoded_vectors(conn)
        # What Django's init_connection_state does: its time zone (timestamps come back as the ORM's
        # do) and OPTIONS' assume_role.
        if timezone_name and conn.info.parameter_status("TimeZone") != timezone_name:
            await conn.execute("SELECT set_config('TimeZone', %s, false)", [timezone_name])
        if role:
            await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))

    return configure


def _close_ended() -> None:
    """Pools of loops that have ended cannot be closed the asyncio way: their connections are closed
    here, so a script's successive ``asyncio.run``s leave no server connection behind."""
    for loop in [loop for loop in list(_pools) if loop.is_closed()]:
        for pool in _pools.pop(loop, {}).values():
            for conn in list(getattr(pool, "_pool", ())):  # psycopg_pool's idle connections
                conn.pgconn.finish()


async def pool_for(using: str = "default") -> AsyncConnectionPool:
    """The running loop's pool of async connections to the database ``using``, opened on first use."""
    loop = asyncio.get_running_loop()
    pools = _pools.get(loop)
    if pools is None:
        _close_ended()
        pools = _pools.setdefault(loop, {})
    pool = pools.get(using)
    if pool is None:
        wrapper = connections[using]
        params = wrapper.get_connection_params()
        params.pop("cursor_factory", None)  # Django's sync cursor class
        params["autocommit"] = True  # each search sends its own BEGIN and COMMIT
        # Told apart from Django's own connections in pg_stat_activity, unless the site names its own.
        params.setdefault("application_name", APPLICATION_NAME)
        health = wrapper.settings_dict.get("CONN_HEALTH_CHECKS")
        pool = AsyncConnectionPool(
            kwargs=params,
            min_size=1,
            max_size=max(1, conf.async_pool_size()),
            open=False,
            configure=_configure(using),
            check=AsyncConnectionPool.check_connection if health else None,
            name=f"vectorstore-{using}",
        )
        # Set before the first await: another task of this loop finds it and waits on the same pool.
        pools[using] = pool
        await pool.open()
    return pool


async def aclose() -> None:
    """Close the running event loop's pools (a server's shutdown, a test's end)."""
    for pool in _pools.pop(asyncio.get_running_loop(), {}).values():
        await pool.close()


async def arun(
    using: str, settings: dict[str, str], statements: Sequence[Statement], vector: np.ndarray | None
) -> list[list[tuple]]:
    """``statements.run`` on a pooled async connection: BEGIN, the ``SET LOCAL``s, the statements and
    COMMIT in one round trip. A cancelled task cancels its query on the server (psycopg does), and the
    pool rolls back what the connection was left in before lending it again."""
    wrapper = connections[using]
    bound = pg.binary_vector(vector) if vector is not None else None
    pool = await pool_for(using)
    # Django's exceptions, as statements.run raises them (SearchTimeout reads a cancelled statement
    # from them); the connection's own error state is the pool's, not Django's.
    with wrapper.wrap_database_errors:
        async with pool.connection() as conn:
            cursors = [psycopg.AsyncCursor(conn) for _ in range(len(statements) + 1)]
            try:
                async with conn.pipeline():
                    for slot, text, params in pipelined(settings, statements, bound, own=True):
                        await cursors[slot].execute(text, params, prepare=False)
                return [
                    [] if statement.empty else statement.rows(await cursor.fetchall(), wrapper)
                    for cursor, statement in zip(cursors[1:], statements, strict=True)
                ]
            finally:
                for cursor in cursors:
                    await cursor.close()
