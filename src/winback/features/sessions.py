"""Staging: behaviour events with a customer key and a session key, as portable Ibis expressions.

The same definitions as the store's ``event_sessions`` view (docs/events.md): an anonymous id is merged
into the user id it is first seen with; a session is the source's session id, else a run of a customer's
events with gaps of at most ``gap_minutes``. Messages winback sent belong to no session and are dropped.

Window frames are written out (``rows=(None, 0)``): Ibis's ``ibis.window(order_by=...)`` spans the whole
partition, unlike SQL's default frame, so a running count must say that it runs.
"""

from __future__ import annotations

import ibis
from ibis import _

BEHAVIOUR_TYPES = ("view", "add_to_cart", "remove_from_cart", "checkout_start", "purchase")


def with_user_key(events: ibis.Table) -> ibis.Table:
    """Events plus ``user_key``: the user id, else the user id the anonymous id was seen with."""
    identity = (
        events.filter(_.anonymous_id.notnull() & _.user_id.notnull())
        .group_by("anonymous_id")
        .aggregate(merged_user_id=_.user_id.argmin(_.timestamp))
    )
    joined = events.left_join(identity, "anonymous_id")
    return joined.select(
        *events.columns,
        user_key=ibis.coalesce(
            joined.user_id, joined.merged_user_id, ibis.literal("anonymous:") + joined.anonymous_id
        ),
    )


def sessionize(events: ibis.Table, gap_minutes: int = 30) -> ibis.Table:
    """Behaviour events with ``user_key``, ``session_key`` and ``ts`` (epoch seconds, float).

    ``ts`` keeps time arithmetic numeric, which DuckDB and Spark treat alike (their interval types
    differ).
    """
    keyed = with_user_key(events.filter(_.event_type.isin(BEHAVIOUR_TYPES)))
    keyed = keyed.mutate(ts=keyed.timestamp.epoch_seconds().cast("float64"))
    # Only events without a source session id need the gap windows (two sorts of every such event); the
    # others keep their session id. Most sources give one, so this skips most of the work.
    given = keyed.filter(keyed.session_id.notnull()).mutate(session_key=keyed.session_id)
    given = _one_customer_per_session(given)
    own = keyed.filter(keyed.session_id.isnull())
    by_user = ibis.window(group_by=own.user_key, order_by=[own.ts, own.event_id])
    gap = own.ts - own.ts.lag().over(by_user)
    marked = own.mutate(starts=ibis.ifelse(gap.isnull() | (gap > gap_minutes * 60), 1, 0))
    running = ibis.window(group_by=marked.user_key, order_by=[marked.ts, marked.event_id], rows=(None, 0))
    number = marked.starts.sum().over(running)
    derived = marked.mutate(session_key=marked.user_key + ibis.literal("#") + number.cast("string"))
    return given.union(derived.drop("starts"))


def _one_customer_per_session(given: ibis.Table) -> ibis.Table:
    """A source session belongs to one customer: its first signed-in one, else its first visitor.

    An anonymous id that is never seen with a user id stays its own customer, so a session that starts
    anonymous and continues signed in would otherwise be split between two customers.
    """
    signed_in = ~given.user_key.startswith("anonymous:")
    owners = given.group_by("session_key").aggregate(
        owner=ibis.coalesce(given.user_key.argmin(given.ts, where=signed_in), given.user_key.argmin(given.ts))
    )
    joined = given.join(owners, "session_key")
    return joined.mutate(user_key=joined.owner).drop("owner")
