"""The audit log of a certification service: every issued certificate (and every reproduction) as one
row of a SQLite table, so that "how many certificates were issued for this input, and to whom" is one
query, and a client's spent failure probability (docs/theory.md §8) can be summed and capped.

    SELECT client, COUNT(*) FROM certificates WHERE input_sha256 = ? AND mode = 'issued' GROUP BY client;

SQLite is the embedded default (`smoothgen serve --audit-db PATH`, default `audit.sqlite` in the state
folder); the file is opened in WAL mode with full synchronisation, so each issued certificate is on disk
before its response leaves, and several replicas of one machine can share it.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from smoothgen.errors import SmoothgenError, first_line

SCHEMA = """
CREATE TABLE IF NOT EXISTS certificates (
    serial              INTEGER PRIMARY KEY AUTOINCREMENT,
    certificate_id      TEXT NOT NULL,
    issued_at           TEXT NOT NULL,
    client              TEXT NOT NULL,
    endpoint            TEXT NOT NULL,
    mode                TEXT NOT NULL CHECK (mode IN ('issued', 'reproduction')),
    model_sha256        TEXT NOT NULL,
    input_sha256        TEXT NOT NULL,
    seed                INTEGER NOT NULL,
    failure_probability REAL NOT NULL,
    key_id              TEXT,
    document            TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_input ON certificates (input_sha256);
CREATE INDEX IF NOT EXISTS certificates_client ON certificates (client, mode);
"""


class AuditError(SmoothgenError, OSError):
    """The audit log cannot be opened or written."""


class BudgetExceededError(SmoothgenError, PermissionError):
    """Issuing the certificate would take the client's summed failure probability past the server's
    budget (`smoothgen serve --alpha-budget`): HTTP 403."""


class AuditLog:
    """One SQLite connection shared by a service's threads (serialised by a lock).

    Args:
        path: the database file (created with its table when absent), or ":memory:".
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            try:  # readable by the server's user only; SQLite gives its -wal and -shm files the same mode
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as exc:
                raise AuditError(f"cannot open the audit log {self.path}: {first_line(exc)}") from exc
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {first_line(exc)}") from exc
        self._lock = threading.Lock()

    def spent(self, client: str) -> float:
        """The client's summed failure probability over its distinct issued certificates (a repeat of a
        request gets the same seed and the same certificate, so it adds no new chance of a false one)."""
        with self._lock:
            return self._spent(client)

    def known(self, client: str, model_sha256: str, seed: int) -> bool:
        """Whether this client was issued the certificate of this model and seed already (a repeat)."""
        with self._lock:
            return self._known(client, model_sha256, seed)

    def _known(self, client: str, model_sha256: str, seed: int) -> bool:
        return self._db.execute("SELECT 1 FROM certificates WHERE client = ? AND mode = 'issued' AND model_sha256 = ? "
                                "AND seed = ? LIMIT 1", (client, model_sha256, seed)).fetchone() is not None

    def _spent(self, client: str) -> float:
        row = self._db.execute(
            "SELECT COALESCE(SUM(fp), 0.0) FROM (SELECT MAX(failure_probability) AS fp FROM certificates "
            "WHERE client = ? AND mode = 'issued' GROUP BY model_sha256, seed)", (client,)).fetchone()
        return float(row[0])

    def record(self, entry: dict[str, Any], document: str, budget: float | None = None) -> int:
        """Append one row (entry: certificate_id, issued_at, client, endpoint, mode, model_sha256,
        input_sha256, seed, failure_probability, key_id); returns its serial number.

        With a budget, an issued certificate whose seed is new for this client is refused
        (BudgetExceededError) when the client's spent failure probability plus its own would exceed it;
        the check and the insert are one transaction, so concurrent requests cannot overdraw."""
        columns = ("certificate_id", "issued_at", "client", "endpoint", "mode", "model_sha256", "input_sha256", "seed",
                   "failure_probability", "key_id")
        values = tuple(entry[c] for c in columns) + (document,)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    if budget is not None and entry["mode"] == "issued":
                        known = self._known(entry["client"], entry["model_sha256"], entry["seed"])
                        spent = self._spent(entry["client"])
                        if not known and spent + entry["failure_probability"] > budget:
                            raise BudgetExceededError(
                                f"client {entry['client']!r} has spent {spent:.3g} of its failure-probability budget "
                                f"{budget:.3g}; a certificate at {entry['failure_probability']:.3g} would exceed it "
                                "(docs/theory.md §8)")
                    cursor = self._db.execute(
                        f"INSERT INTO certificates ({', '.join(columns)}, document) VALUES ({', '.join('?' * (len(columns) + 1))})",
                        values)
                    self._db.execute("COMMIT")
                    return int(cursor.lastrowid)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AuditError(f"cannot write the audit log {self.path}: {first_line(exc)}") from exc

    def count(self, input_sha256: str | None = None, client: str | None = None, mode: str = "issued") -> int:
        """How many rows of `mode` there are for an input and/or a client."""
        where, args = ["mode = ?"], [mode]
        if input_sha256 is not None:
            where.append("input_sha256 = ?")
            args.append(input_sha256)
        if client is not None:
            where.append("client = ?")
            args.append(client)
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM certificates WHERE {' AND '.join(where)}", args).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
