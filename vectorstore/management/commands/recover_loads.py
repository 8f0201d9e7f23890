"""Finish parallel loads whose process died mid-commit: commit or roll back their prepared transactions."""

from __future__ import annotations

from vectorstore.loading import twophase
from vectorstore.management.commands._base import ServiceCommand


class Command(ServiceCommand):
    help = (
        "Commit (when their commit decision was recorded) or roll back the prepared transactions left by "
        "a `bulk_copy --workers N` whose process died; loads still running are left alone. "
        "Every bulk_copy does this first; run it by hand to release their locks sooner."
    )

    def handle(self, *args, **o) -> None:
        result = twophase.recover_prepared_loads()
        self.emit(
            f"{len(result.committed)} prepared transactions committed, {len(result.rolled_back)} rolled back,"
            f" {len(result.running)} of running loads left alone",
            {"committed": result.committed, "rolled_back": result.rolled_back, "running": result.running},
            o["json"],
        )
