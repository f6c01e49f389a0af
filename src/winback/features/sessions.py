"""Staging: behaviour events with a customer key and a session key, as portable Ibis expressions.

The same definitions as the store's ``event_sessions`` view (docs/events.md): an anonymous id is merged
into the user id it is first seen with; a session is the source's session id, else a run of a customer's
events with gaps of at most ``gap_minutes``. A source session belongs to one customer (its first
signed-in one, else its first visitor). Messages winback sent belong to no session and are dropped.

The work is in stages (:class:`SessionStages`), each a small table except the last two: the identities
(anonymous id -> user id), the source sessions seen with more than one customer (few: most sessions
have one) and their owners, then the events with a source session id (one pass over them, joined with
the small tables) and the events without one (the gap windows). :func:`sessionize` composes them
into one expression; :class:`~winback.features.tables.FeatureTables` computes the small stages first
and keeps each, so the events are copied once. (In one query, DuckDB keeps a whole extra copy of the
events it reads twice: for the owners and for the output.)

Window frames are written out (``rows=(None, 0)``): Ibis's ``ibis.window(order_by=...)`` spans the whole
partition, unlike SQL's default frame, so a running count must say that it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ibis

BEHAVIOUR_TYPES = ("view", "add_to_cart", "remove_from_cart", "checkout_start", "purchase")
#: Event columns the sessionised events leave out: the identifiers ``user_key`` and ``session_key``
#: replace, and the currency no feature reads (each column left out is a column not copied).
LEFT_OUT = ("user_id", "anonymous_id", "session_id", "currency")


def _keep(table: ibis.Table) -> ibis.Table:
    return table


@dataclass
class SessionStages:
    """The stages of sessionising ``events`` (see the module docstring). ``keep`` is applied to each
    stage as it is built (e.g. a backend's cache, so later stages read the computed table)."""

    events: ibis.Table
    gap_minutes: int = 30
    keep: Callable[[ibis.Table], ibis.Table] = _keep

    def behaviour(self, with_session_id: bool) -> ibis.Table:
        e = self.events
        given = e.session_id.notnull() if with_session_id else e.session_id.isnull()
        return e.filter(e.event_type.isin(BEHAVIOUR_TYPES) & given)

    def identities(self) -> ibis.Table:
        """``anonymous_id`` -> ``merged_user_id``: the user id each anonymous id is first seen with."""
        e = self.events
        seen = e.filter(e.event_type.isin(BEHAVIOUR_TYPES) & e.anonymous_id.notnull() & e.user_id.notnull())
        return seen.group_by("anonymous_id").aggregate(merged_user_id=seen.user_id.argmin(seen.timestamp))

    @staticmethod
    def keyed(part: ibis.Table, identities: ibis.Table, columns: list[str]) -> ibis.Table:
        """``part``'s ``columns`` plus ``user_key`` (the user id, else the one its anonymous id was seen
        with, else ``anonymous:<id>``) and ``ts`` (epoch seconds, float: time arithmetic that DuckDB
        and Spark treat alike, unlike their interval types)."""
        joined = part.left_join(identities, "anonymous_id")
        return joined.select(
            *columns,
            user_key=ibis.coalesce(
                joined.user_id, joined.merged_user_id, ibis.literal("anonymous:") + joined.anonymous_id
            ),
            ts=joined.timestamp.epoch_seconds().cast("float64"),
        )

    def _session_keys(self, identities: ibis.Table) -> ibis.Table:
        part = self.behaviour(True).select("session_id", "user_id", "anonymous_id", "timestamp")
        return self.keyed(part, identities, ["session_id"])

    def shared(self, identities: ibis.Table) -> ibis.Table:
        """``session_id`` of the source sessions seen with more than one customer (usually few or
        none: finding them is one cheap group-by, finding their owners is not)."""
        keys = self._session_keys(identities)
        per_session = keys.group_by("session_id").aggregate(
            lowest=keys.user_key.min(), highest=keys.user_key.max()
        )
        return per_session.filter(per_session.lowest != per_session.highest).select("session_id")

    def owners(self, identities: ibis.Table, shared: ibis.Table) -> ibis.Table:
        """``owned_session`` -> ``owner`` for the ``shared`` sessions: their first signed-in customer,
        else their first visitor. (An anonymous id never seen with a user id stays its own customer, so
        a session that starts anonymous and goes on signed in would otherwise be split between two
        customers.)"""
        keys = self._session_keys(identities).semi_join(shared, "session_id")
        signed_in = ~keys.user_key.startswith("anonymous:")
        owners = keys.group_by("session_id").aggregate(
            owner=ibis.coalesce(keys.user_key.argmin(keys.ts, where=signed_in), keys.user_key.argmin(keys.ts))
        )
        return owners.rename(owned_session="session_id")

    @property
    def columns(self) -> list[str]:
        """The event columns kept (all but :data:`LEFT_OUT`)."""
        return [c for c in self.events.columns if c not in LEFT_OUT]

    def given(self, identities: ibis.Table, owners: ibis.Table) -> ibis.Table:
        """The events with a source session id, keyed: ``session_key`` is that id."""
        columns = self.columns
        keyed = self.keyed(self.behaviour(True), identities, [*columns, "session_id"])
        joined = keyed.left_join(owners, keyed.session_id == owners.owned_session)
        return joined.select(
            *columns,
            user_key=ibis.coalesce(joined.owner, joined.user_key),
            ts=joined.ts,
            session_key=joined.session_id,
        )

    def derived(self, identities: ibis.Table) -> ibis.Table:
        """The events without a source session id, keyed: ``session_key`` is ``<user_key>#<n>``, the
        customer's n-th run of events with gaps of at most ``gap_minutes``."""
        own = self.keyed(self.behaviour(False), identities, self.columns)
        by_user = ibis.window(group_by=own.user_key, order_by=[own.ts, own.event_id])
        gap = own.ts - own.ts.lag().over(by_user)
        marked = own.mutate(starts=ibis.ifelse(gap.isnull() | (gap > self.gap_minutes * 60), 1, 0))
        running = ibis.window(group_by=marked.user_key, order_by=[marked.ts, marked.event_id], rows=(None, 0))
        number = marked.starts.sum().over(running)
        derived = marked.mutate(session_key=marked.user_key + ibis.literal("#") + number.cast("string"))
        return derived.drop("starts")

    def sessioned(self, is_empty: Callable[[ibis.Table], bool] | None = None) -> ibis.Table:
        """Every stage in turn, each passed through ``keep``; the union of the last two, or with
        ``is_empty`` (a check of a kept stage) the one that has rows when the other has none: most
        sources give every event a session id or none, and a union costs its readers a fifth more."""
        identities = self.keep(self.identities())
        owners = self.keep(self.owners(identities, self.keep(self.shared(identities))))
        given = self.keep(self.given(identities, owners))
        derived = self.keep(self.derived(identities))
        if is_empty is not None and is_empty(derived):
            return given
        if is_empty is not None and is_empty(given):
            return derived
        return given.union(derived)


def sessionize(events: ibis.Table, gap_minutes: int = 30) -> ibis.Table:
    """Behaviour events (their columns but :data:`LEFT_OUT`) with ``user_key``, ``session_key`` and
    ``ts`` (epoch seconds, float), as one expression (see the module docstring)."""
    return SessionStages(events, gap_minutes).sessioned()
