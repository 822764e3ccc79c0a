"""A data directory written before events tables lost their primary key opens unchanged: its
events tables are copied once into tables without the key, with every row, column type and
NOT NULL, and events are then upserted into them as into new ones."""

from __future__ import annotations

from pathlib import Path

import duckdb

from opencdp.catalog.model import Property
from opencdp.catalog.types import PropertyType
from opencdp.store.base import EventRows
from opencdp.store.duckdb import DuckDBStore


def test_an_old_events_table_loses_its_key_once_and_keeps_its_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "store.duckdb")
    with duckdb.connect(path) as con:  # the tables as older versions created them
        con.execute(
            "CREATE TABLE p7_events (event_id VARCHAR PRIMARY KEY, event_name VARCHAR NOT NULL, "
            "event_time TIMESTAMP NOT NULL, received_at TIMESTAMP NOT NULL, "
            "user_id BIGINT NOT NULL, p_3 DOUBLE)"
        )
        con.execute(
            "INSERT INTO p7_events VALUES ('e1', 'buy', '2024-01-02', '2024-01-03', 5, 1.5), "
            "('e2', 'visit', '2024-01-04', '2024-01-05', 6, NULL)"
        )
        con.execute("CREATE TABLE p7_profiles (user_id BIGINT NOT NULL, "
                    "created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL)")  # fmt: skip
    store = DuckDBStore(path)
    store.close()
    with duckdb.connect(path) as con:
        assert con.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'p7_events' "
            "AND constraint_type = 'PRIMARY KEY'"
        ).fetchone() == (0,)
        columns = con.execute(
            "SELECT column_name, data_type, is_nullable FROM duckdb_columns() "
            "WHERE table_name = 'p7_events' ORDER BY column_index"
        ).fetchall()
        assert columns == [
            ("event_id", "VARCHAR", False),
            ("event_name", "VARCHAR", False),
            ("event_time", "TIMESTAMP", False),
            ("received_at", "TIMESTAMP", False),
            ("user_id", "BIGINT", False),
            ("p_3", "DOUBLE", True),
        ]
        # Once: a table made keyed again by hand is left alone on the next open.
        con.execute("CREATE TABLE p8_events (event_id VARCHAR PRIMARY KEY)")
    store = DuckDBStore(path)
    amount = Property(3, "event", "amount", PropertyType.NUMBER)
    with store.writer() as w:
        w.upsert_events(
            7,
            EventRows(
                event_ids=["e1", "e3"], names=["buy", "buy"], times=[0, 0], received=[0, 0],
                user_ids=[5, 5], values=[{}, {3: 2.0}],
            ),
            [amount],
        )  # fmt: skip
    store.close()
    with duckdb.connect(path) as con:
        assert con.execute("SELECT event_id, p_3 FROM p7_events ORDER BY event_id").fetchall() == [
            ("e1", 1.5),  # a null leaves the stored value
            ("e2", None),
            ("e3", 2.0),
        ]
        assert con.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'p8_events' "
            "AND constraint_type = 'PRIMARY KEY'"
        ).fetchone() == (1,)
