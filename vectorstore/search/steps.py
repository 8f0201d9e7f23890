"""A search written once as steps, run by either of two drivers: ``drive`` in the calling thread
(``search()``), ``adrive`` on an event loop (``asearch()``).

A search is a generator that yields what it needs done and is sent the answer: ``Run`` (statements for one
round trip), ``Call`` (a look-up that may block: a catalog or tuning read when the process's copy is stale,
the embedding model) or ``Guard`` (the query was embedded by the table's model at a version: every later
round trip checks, in its own transaction, that the table still has it, and raises ``ModelChanged`` where a
swap of ``reembed`` came first). ``drive`` does each in place. ``adrive`` awaits ``aio.arun`` for a ``Run``
and takes a ``Call``'s cached answer where the process has one, sending it to a thread only when it has not:
with warm caches an async search never leaves the event loop. An error of a step is thrown into the
generator where it yielded, so both drivers raise the same exceptions (``SearchTimeout`` for a cancelled
statement). (No library drives one generator both ways for Django; asgiref wraps whole functions in threads,
which is the cost avoided here.)
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from asgiref.sync import sync_to_async

from vectorstore.reembed import record
from vectorstore.search import aio, statements
from vectorstore.search.statements import Statement

T = TypeVar("T")


@dataclass(frozen=True)
class Run:
    """Statements to run in one transaction and one round trip (``statements.run``)."""

    using: str
    settings: dict[str, str]
    statements: Sequence[Statement]
    vector: np.ndarray | None


@dataclass(frozen=True)
class Call:
    """A function that may block; ``cached`` answers ``(value,)`` without I/O when it can, else None.
    ``database``: it uses Django's connection, so an async driver runs it on Django's one sync thread
    (as Django's async ORM does); else on any thread (the model)."""

    function: Callable[[], Any]
    cached: Callable[[], tuple | None] | None = None
    database: bool = True


@dataclass(frozen=True)
class Guard:
    """The query vector came from the table's embedding model at ``version``: each later ``Run`` reads the
    record's version in its own transaction (after its statements, which hold the table's lock)."""

    model: type
    using: str
    version: int

    @property
    def statement(self) -> Statement:
        return Statement(record.GUARD_SQL, (self.model._meta.db_table,), ())

    def check(self, rows: list[tuple]) -> None:
        if rows[0][0] != self.version:
            record.forget(self.model._meta.db_table)
            raise record.ModelChanged(f"{self.model._meta.db_table}: the embedding model changed")

    def explain(self, error: Exception) -> Exception:
        """A statement's error (a query vector of the old size against the new column, say) is the
        model's change where the record moved: ModelChanged then, else the error itself."""
        try:
            moved = record.read(self.model, self.using).version != self.version
        except Exception:
            return error
        if not moved:
            return error
        return record.ModelChanged(f"{self.model._meta.db_table}: the embedding model changed")


Steps = Generator[Run | Call | Guard, Any, T]


def _guarded(step: Run, guard: Guard | None) -> list[Statement]:
    return [*step.statements, guard.statement] if guard is not None else list(step.statements)


def _checked(answer: list, guard: Guard | None) -> list:
    if guard is not None:
        guard.check(answer.pop())
    return answer


def drive(steps: Steps[T]) -> T:
    """Run a search's steps in this thread."""
    answer: Any = None
    error: BaseException | None = None
    guard: Guard | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(answer)
        except StopIteration as done:
            return done.value
        answer, error = None, None
        try:
            if isinstance(step, Guard):
                guard = step
            elif isinstance(step, Run):
                try:
                    run = statements.run(step.using, step.settings, _guarded(step, guard), step.vector)
                except Exception as exc:
                    if guard is None or (changed := guard.explain(exc)) is exc:
                        raise
                    raise changed from exc
                answer = _checked(run, guard)
            else:
                answer = step.function()
        except Exception as exc:
            error = exc


async def adrive(steps: Steps[T]) -> T:
    """Run a search's steps on the running event loop (see the module's docstring)."""
    answer: Any = None
    error: BaseException | None = None
    guard: Guard | None = None
    try:
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(answer)
            except StopIteration as done:
                return done.value
            answer, error = None, None
            try:
                if isinstance(step, Guard):
                    guard = step
                elif isinstance(step, Run):
                    try:
                        run = await aio.arun(step.using, step.settings, _guarded(step, guard), step.vector)
                    except Exception as exc:
                        if guard is None or (changed := await sync_to_async(guard.explain)(exc)) is exc:
                            raise
                        raise changed from exc
                    answer = _checked(run, guard)
                else:
                    found = step.cached() if step.cached is not None else None
                    if found is not None:
                        answer = found[0]
                    else:
                        answer = await sync_to_async(step.function, thread_sensitive=step.database)()
            except Exception as exc:
                error = exc
    finally:
        steps.close()  # a cancelled search: its generator's context managers exit too
