"""Read side of the town store: the catalog, record pages and aggregates, the change log."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from allmende.errors import DatasetNotFound, StoreError
from allmende.store.aggregates import AggregatePlan, AggregateResult
from allmende.store.expressions import and_filters, register_functions
from allmende.store.filters import SqlFilter
from allmende.store.ordering import OrderPlan
from allmende.store.schema import connect
from allmende.v1 import catalog_pb2

__all__ = ["ChangeRow", "StoreReader"]

_BY_ID = OrderPlan(())


# One entry of the change log as StoreReader.changes gives it, with whether the new and the
# old record pass a filter: (seq, kind, record_id, json, changed_at, new_visible,
# old_visible), the last two true or false as SQLite gives them (1 or 0). A plain tuple, as
# SQLite returns it: a Subscribe stream reads them by the thousand, and even a NamedTuple
# made per row costs ~0.35 µs, a tenth of the gateway's own work per change.
ChangeRow = tuple[int, str, str, str | None, str, int, int]


def _descriptor(blob: bytes) -> catalog_pb2.DatasetDescriptor:
    desc = catalog_pb2.DatasetDescriptor()
    desc.ParseFromString(blob)
    return desc


class StoreReader:
    """Read-only access to a town's store. Opens lazily, so a gateway may start before its node.

    Not for several threads at once: the gateway calls it from its event loop only.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        # Own datasets' descriptors, parsed once and kept until another connection (the
        # node) commits anything: SQLite's data_version then changes.
        self._descriptors: dict[str, catalog_pb2.DatasetDescriptor] = {}
        self._data_version = -1

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            conn = connect(self.path, readonly=True)
            register_functions(conn)  # within-distance needs sin, cos, asin, sqrt, radians
            self._conn = conn
        return conn

    def _failed(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"reading store {self.path} failed: {exc}")

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        try:
            yield conn
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def close(self) -> None:
        self._descriptors.clear()
        self._data_version = -1
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- catalog -------------------------------------------------------------------------

    def catalog(self, owner: str = "", keyword: str = "") -> list[catalog_pb2.DatasetDescriptor]:
        """Every dataset in the federated catalog, ordered by owner and id."""
        with self._db() as db:
            sql, params = "SELECT descriptor FROM catalog", []
            if owner:
                sql, params = sql + " WHERE owner = ?", [owner]
            rows = db.execute(sql + " ORDER BY owner, dataset", params).fetchall()
        out = [_descriptor(r[0]) for r in rows]
        return [d for d in out if not keyword or keyword in d.keywords]

    def catalog_entry(self, owner: str, dataset: str) -> catalog_pb2.DatasetDescriptor:
        """One descriptor of the federated catalog; raises DatasetNotFound."""
        with self._db() as db:
            row = db.execute(
                "SELECT descriptor FROM catalog WHERE owner = ? AND dataset = ?", (owner, dataset)
            ).fetchone()
        if row is None:
            raise DatasetNotFound(owner, dataset)
        return _descriptor(row[0])

    def own_dataset(self, dataset: str, owner: str) -> catalog_pb2.DatasetDescriptor:
        """A dataset this town owns and stores; raises DatasetNotFound.

        The same descriptor object comes back until the store changes: do not modify it.
        """
        # Asked on every request: the connection is used directly (no context manager).
        db = self._connection()
        try:
            version = db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._descriptors.clear()
                self._data_version = version
            desc = self._descriptors.get(dataset)
            if desc is not None:
                return desc
            row = db.execute("SELECT descriptor FROM datasets WHERE id = ?", (dataset,)).fetchone()
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        if row is None:
            raise DatasetNotFound(owner, dataset)
        desc = self._descriptors[dataset] = _descriptor(row[0])
        return desc

    # -- records -------------------------------------------------------------------------

    def page(
        self,
        dataset: str,
        flt: SqlFilter,
        limit: int,
        order: OrderPlan | None = None,
        after: tuple[Sequence[Any], str] | None = None,
    ) -> list[tuple[str, str]]:
        """Up to ``limit`` (id, json) rows passing ``flt`` in ``order`` (None: by id).

        ``after`` is the sort key and id of the last row of the previous page (keyset
        paging: the rows after it, with no gap and no repeat while the data stays put).
        Raises StoreError, and InvalidRequest when ``after`` does not fit ``order``.
        """
        order = order or _BY_ID
        where = flt if after is None else and_filters(flt, order.after(*after))
        sql = f"SELECT id, json FROM records WHERE dataset = ? AND {where.sql} {order.sql} LIMIT ?"
        params: list[object] = [dataset, *where.params, *order.params, limit]
        try:
            rows: list[tuple[str, str]] = self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        return rows

    def aggregate(
        self,
        dataset: str,
        plan: AggregatePlan,
        flt: SqlFilter,
        *,
        min_group_size: int = 0,
        max_groups: int,
    ) -> AggregateResult:
        """The groups of ``dataset``'s records passing ``flt`` as ``plan`` measures them.

        Groups under ``min_group_size`` records are left out and counted; at most
        ``max_groups`` are returned. Raises StoreError.
        """
        sql, params = plan.sql(dataset, flt)
        with self._db() as db:
            rows = db.execute(sql, params).fetchall()
        return plan.groups(rows, min_group_size, max_groups)

    # -- change log ----------------------------------------------------------------------

    def last_seq(self, dataset: str) -> int:
        """The newest change sequence number of ``dataset`` (0 when it never changed)."""
        with self._db() as db:
            row = db.execute(
                "SELECT MAX(seq) FROM changes WHERE dataset = ?", (dataset,)
            ).fetchone()
        return int(row[0] or 0)

    def changes(
        self, dataset: str, after_seq: int, new_flt: SqlFilter, old_flt: SqlFilter, limit: int
    ) -> tuple[list[ChangeRow], int]:
        """Changes after ``after_seq`` where the new or the old record passes the filter.

        Scans at most ``limit`` log entries and returns the visible ones together with the
        last sequence number scanned, from which the next call continues. ``new_flt`` must be
        compiled for column ``json`` and ``old_flt`` for ``old_json``.
        """
        sql = (
            f"SELECT seq, kind, record_id, json, changed_at, "
            f"  CASE WHEN json IS NULL THEN 0 ELSE ({new_flt.sql}) END, "
            f"  CASE WHEN old_json IS NULL THEN 0 ELSE ({old_flt.sql}) END "
            f"FROM changes WHERE dataset = ? AND seq > ? ORDER BY seq LIMIT ?"
        )
        params = [*new_flt.params, *old_flt.params, dataset, after_seq, limit]
        try:
            rows: list[ChangeRow] = self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        visible = [r for r in rows if r[5] or r[6]]
        return visible, (rows[-1][0] if rows else after_seq)

    # -- trust ---------------------------------------------------------------------------

    def revoked_members(self) -> dict[str, str]:
        """Every member the cluster CA revoked, with the reason; raises StoreError.

        The node's trust follower writes the table after verifying the CA's signature.
        """
        with self._db() as db:
            rows = db.execute("SELECT member, reason FROM trust WHERE revoked = 1").fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    def trusted_members(self) -> dict[str, int]:
        """Every member the CA registered and did not revoke, with the statement's version."""
        with self._db() as db:
            rows = db.execute("SELECT member, version FROM trust WHERE revoked = 0").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}
