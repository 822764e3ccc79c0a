"""A customer's profile, found by user id or by an identity, as the APIs show it.

A profile is assembled from the store (the profile row, the user's identities, their events)
and named through the catalog: values by property name (as :func:`catalog.types.public` gives
them: whole numbers as integers), identities by key name. Properties and keys deleted from
the catalog since are left out. Every lookup first waits for the ingest barrier, so it sees
every record acknowledged before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opencdp.catalog.model import Schema
from opencdp.catalog.service import Catalog
from opencdp.catalog.types import public
from opencdp.errors import CdpError, Code, invalid
from opencdp.identity import normalize
from opencdp.store.base import Store

LATEST_EVENTS = 20


@dataclass(frozen=True)
class ProfileEvent:
    event_id: str
    event: str
    event_time: datetime  # naive UTC, as the store keeps it
    received_at: datetime
    properties: dict[str, Any]  # by name; a datetime property's value is a naive UTC datetime


@dataclass(frozen=True)
class Profile:
    user_id: int
    created_at: datetime
    updated_at: datetime
    properties: dict[str, Any]
    identities: list[tuple[str, str]]  # (key name, value)
    event_count: int
    latest_events: list[ProfileEvent]  # newest first


class Profiles:
    """Profile lookups of a project's users."""

    def __init__(self, catalog: Catalog, store: Store, barrier: Callable[[], object]) -> None:
        self.catalog = catalog
        self.store = store
        self.barrier = barrier  # waits until every acknowledged record is in the store

    def find(
        self,
        project_id: int,
        key: str | None = None,
        value: str | None = None,
        user_id: int | None = None,
        latest_events: int = LATEST_EVENTS,
    ) -> Profile:
        """The profile of ``user_id``, or of the user holding ``value`` for the identity key
        ``key``. Refuses (naming ``key`` or ``value``) a lookup that names no user, and answers
        ``not_found`` when there is none."""
        schema = self.catalog.schema(project_id)
        token: tuple[int, str] | None = None
        if user_id is None:
            if not key or value is None:
                raise invalid("key", "give key and value, or user_id")
            prop = schema.identity_keys.get(key)
            if prop is None:
                raise invalid(
                    "key", f"{key!r} is not an identity key ({', '.join(schema.identity_keys)})"
                )
            normalized = normalize(key, value)
            if normalized is None:
                raise invalid("value", "is empty")
            token = (prop.id, normalized)
        self.barrier()
        if token is not None:
            found = self.store.find_user(project_id, token)
            if found is None:
                raise CdpError(Code.NOT_FOUND, f"no profile with {key} = {value!r}", "value")
            user_id = found
        assert user_id is not None
        row = self.store.profile(project_id, user_id, list(schema.user.values()))
        if row is None:
            raise CdpError(Code.NOT_FOUND, f"no profile with user_id {user_id}", "user_id")
        events = self.store.latest_events(
            project_id, user_id, latest_events, list(schema.event.values())
        )
        return Profile(
            user_id=user_id,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            properties=named(schema, row["values"]),
            identities=[
                (schema.by_id[k].name, v)
                for k, v in self.store.identities(project_id, user_id)
                if k in schema.by_id
            ],
            event_count=self.store.event_count(project_id, user_id),
            latest_events=[
                ProfileEvent(
                    e["event_id"],
                    e["event"],
                    e["event_time"],
                    e["received_at"],
                    named(schema, e["values"]),
                )
                for e in events
            ],
        )


def named(schema: Schema, values: dict[int, Any]) -> dict[str, Any]:
    """Values by property id as values by property name, as :func:`public` gives them (a
    datetime stays a datetime); properties no longer in ``schema`` are left out."""
    out = {}
    for pid, v in values.items():
        prop = schema.by_id.get(pid)
        if prop is not None:
            out[prop.name] = v if isinstance(v, datetime) else public(prop.type, v)
    return out
