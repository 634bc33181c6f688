"""A scratch `current_entities` table on the shared test PostgreSQL, for checking compiled SQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[3]
SCHEMA = REPO / "broker" / "storage" / "migrations" / "0001_current_state.sql"
QUERY_INDEXES = REPO / "broker" / "query" / "indexes.sql"


@pytest.fixture(scope="session")
def entities_db(create_database: Callable[[str], str]) -> Iterator[psycopg.Connection]:
    """A connection to a fresh database holding the broker's `current_entities` table and our indexes."""
    url = create_database("query")
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(SCHEMA.read_text())
        connection.execute(QUERY_INDEXES.read_text())
        yield connection
