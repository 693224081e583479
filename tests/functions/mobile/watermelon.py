"""A device as WatermelonDB's synchronize() drives it, over HTTP, for end-to-end sync tests.

It follows WatermelonDB's documented sync algorithm (docs/Sync, src/sync): local records carry
`_status` (synced | created | updated | deleted) and `_changed` (the columns changed locally);
a pull applies remote changes, and for a record with local changes keeps the local value of
every changed column (the default conflict resolver); remote deletions win; a replacement pull
drops synced records the server no longer has. Then the push sends every local change with the
cursor of the pull, and marks it synced when the server answers 2xx. The requests are the ones
README's synchronize() sample sends.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

TABLES = ("countries", "projects", "sectors")


class SyncFailed(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


def http(
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: Any = None,
    timeout: float = 10,
) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept-Encoding": "gzip"}
    if data is not None:
        headers["Content-Type"] = "text/plain;charset=UTF-8"  # what RN fetch sends for a string
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw, status, got = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        raw, status, got = error.read(), error.code, dict(error.headers)
    if got.get("Content-Encoding") == "gzip":
        import gzip

        raw = gzip.decompress(raw)
    return status, got, json.loads(raw) if raw else None


class Device:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token
        self.tables: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in TABLES}
        self.last_pulled_at: int | None = None
        self.push_timeout = 10.0

    # -- local writes, as model.update() / collection.create() / markAsDeleted() record them --

    def create(self, table: str, **values: Any) -> str:
        record_id = str(uuid.uuid4())  # the app's id generator must make UUIDs
        self.tables[table][record_id] = {
            "id": record_id,
            **values,
            "_status": "created",
            "_changed": "",
        }
        return record_id

    def update(self, table: str, record_id: str, **values: Any) -> None:
        record = self.tables[table][record_id]
        record.update(values)
        if record["_status"] == "synced":
            record["_status"] = "updated"
        if record["_status"] == "updated":
            changed = [c for c in record["_changed"].split(",") if c]
            record["_changed"] = ",".join(dict.fromkeys([*changed, *values]))

    def delete(self, table: str, record_id: str) -> None:
        record = self.tables[table][record_id]
        if record["_status"] == "created":
            del self.tables[table][record_id]
        else:
            record["_status"] = "deleted"

    def get(self, table: str, record_id: str) -> dict[str, Any] | None:
        record = self.tables[table].get(record_id)
        return None if record is None or record["_status"] == "deleted" else record

    # -- synchronize() --

    def synchronize(self) -> None:
        self.pull()
        self.push()

    def pull(self) -> None:
        query = urllib.parse.urlencode(
            {
                "last_pulled_at": "null" if self.last_pulled_at is None else self.last_pulled_at,
                "schema_version": 1,
                "migration": json.dumps(None),
            }
        )
        status, _, body = http("GET", f"{self.base_url}/sync?{query}", token=self.token)
        if status != 200:
            raise SyncFailed(status, body)
        replacement = body.get("experimentalStrategy") == "replacement"
        for table, changes in body["changes"].items():
            local = self.tables[table]
            received = set()
            for remote in changes["created"] + changes["updated"]:
                received.add(remote["id"])
                mine = local.get(remote["id"])
                if mine is None or mine["_status"] == "synced":
                    local[remote["id"]] = {**remote, "_status": "synced", "_changed": ""}
                elif mine["_status"] == "deleted":
                    continue  # the local deletion is pushed next
                else:
                    changed = [c for c in mine["_changed"].split(",") if c]
                    resolved = {**remote, **{c: mine[c] for c in changed}}
                    local[remote["id"]] = {
                        **resolved,
                        "_status": mine["_status"],
                        "_changed": mine["_changed"],
                    }
            for record_id in changes["deleted"]:
                local.pop(record_id, None)
            if replacement:
                for record_id in [
                    i for i, r in local.items() if i not in received and r["_status"] == "synced"
                ]:
                    del local[record_id]
        self.last_pulled_at = body["timestamp"]

    def local_changes(self) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for table, records in self.tables.items():
            changes[table] = {
                "created": [dict(r) for r in records.values() if r["_status"] == "created"],
                "updated": [dict(r) for r in records.values() if r["_status"] == "updated"],
                "deleted": [i for i, r in records.items() if r["_status"] == "deleted"],
            }
        return changes

    def push(self, changes: dict[str, Any] | None = None) -> Any:
        changes = changes or self.local_changes()
        if not any(any(v for v in c.values()) for c in changes.values()):
            return None
        status, headers, body = http(
            "POST",
            f"{self.base_url}/sync?last_pulled_at={self.last_pulled_at}",
            token=self.token,
            body=changes,
            timeout=self.push_timeout,
        )
        if status // 100 != 2:
            raise SyncFailed(status, body)
        for records in self.tables.values():
            for record_id in list(records):
                record = records[record_id]
                if record["_status"] == "deleted":
                    del records[record_id]
                elif record["_status"] in ("created", "updated"):
                    record["_status"], record["_changed"] = "synced", ""
        return headers

    def sync_with_retry(self) -> None:
        """What the WatermelonDB docs advise: retry synchronize() once if it fails."""
        try:
            self.synchronize()
        except SyncFailed:
            self.synchronize()
