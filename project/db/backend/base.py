"""Django's PostgreSQL backend for the embedded server: it starts the server on the first connection a
process makes, so that a command that never connects (``--help``, ``embed_parquet``) starts none."""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        if not self.settings_dict.get("HOST"):
            from project.db.embedded import start_embedded

            socket_dir, port = start_embedded()
            self.settings_dict["HOST"], self.settings_dict["PORT"] = str(socket_dir), str(port)
        return super().get_connection_params()
