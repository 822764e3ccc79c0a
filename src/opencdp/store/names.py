"""The names a store generates for a project's tables and columns, the same on every engine.

Every identifier in a store's SQL is generated here (``p{project id}_events``,
``p_{property id}``) and checked by :func:`ident`; every value is a bound parameter or a column
of staged rows. No user string ever becomes an identifier.
"""

from __future__ import annotations

import re

from opencdp.store import tree

_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def ident(name: str) -> str:
    """A generated identifier, quoted; anything else is a bug, never user input.

    >>> ident("p1_events")
    '"p1_events"'
    """
    if not _IDENT.fullmatch(name):
        raise ValueError(f"not a generated identifier: {name!r}")
    return f'"{name}"'


KINDS = ("profiles", "identities", "events", "list_members", "segment_members")


def collection_table(project_id: int, collection_id: int) -> str:
    if not isinstance(project_id, int) or not isinstance(collection_id, int):
        raise ValueError("bad table reference")
    return ident(f"p{project_id}_c{collection_id}")


def table(project_id: int, kind: str) -> str:
    return ident(table_name(project_id, kind))


def table_name(project_id: int, kind: str) -> str:
    """A project's table, unquoted (:func:`table` quotes it)."""
    if not isinstance(project_id, int) or kind not in KINDS:
        raise ValueError("bad table reference")
    return f"p{project_id}_{kind}"


def logical_tables(project_id: int) -> dict[str, str]:
    """The physical tables behind the logical tables of a project's segment queries."""
    kinds = {tree.USERS: "profiles", tree.EVENTS: "events", tree.LISTS: "list_members"}
    return {logical: table_name(project_id, kind) for logical, kind in kinds.items()}
