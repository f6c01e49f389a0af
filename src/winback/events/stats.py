"""What is in the store: the summary ``winback events stats`` prints.

Definitions (shared with DESIGN.md): users are identities after anonymous ids are merged into the user
id they were later seen with; sessions come from the store's sessionisation (source id, else the
inactivity gap); a cart is a session with at least one ``add_to_cart``, abandoned when that session has
no purchase; purchases count orders (distinct order ids, or purchase events without one); revenue sums
line items (price x quantity) and order totals (``value``) of purchases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from winback.events.store import EventStore


def event_stats(store: EventStore) -> dict[str, Any]:
    """The store's summary as plain JSON-ready data."""
    con = store.con
    row = con.execute(
        """
        SELECT count(*), count(DISTINCT user_key), count(DISTINCT session_key), min(timestamp), max(timestamp)
        FROM event_sessions
        """
    ).fetchone()
    assert row is not None
    events, users, sessions, first, last = row
    carts = con.execute(
        """
        WITH s AS (
            SELECT session_key, bool_or(event_type = 'add_to_cart') AS has_cart,
                   bool_or(event_type = 'purchase') AS has_purchase
            FROM event_sessions WHERE session_key IS NOT NULL GROUP BY session_key
        )
        SELECT count(*) FILTER (has_cart), count(*) FILTER (has_cart AND NOT has_purchase) FROM s
        """
    ).fetchone()
    assert carts is not None
    purchases = con.execute(
        """
        SELECT count(DISTINCT (coalesce(user_id, anonymous_id), order_id)) FILTER (order_id IS NOT NULL)
               + count(*) FILTER (order_id IS NULL),
               coalesce(sum(coalesce(price * coalesce(quantity, 1), value, 0)), 0)
        FROM event_log WHERE event_type = 'purchase'
        """
    ).fetchone()
    assert purchases is not None
    currencies = [r[0] for r in con.execute("SELECT DISTINCT currency FROM event_log ORDER BY 1").fetchall()]
    by_type = dict(
        con.execute("SELECT event_type, count(*) FROM event_log GROUP BY 1 ORDER BY 2 DESC").fetchall()
    )
    by_day = {
        str(d): n
        for d, n in con.execute(
            "SELECT CAST(timestamp AS DATE), count(*) FROM event_log GROUP BY 1 ORDER BY 1"
        ).fetchall()
    }
    n_carts, abandoned = int(carts[0]), int(carts[1])
    return {
        "events": int(events),
        "users": int(users),
        "sessions": int(sessions),
        "carts": n_carts,
        "abandoned_carts": abandoned,
        "abandonment_rate": round(abandoned / n_carts, 4) if n_carts else None,
        "purchases": int(purchases[0]),
        "revenue": round(float(purchases[1]), 2),
        "currencies": currencies,
        "by_type": {str(k): int(v) for k, v in by_type.items()},
        "by_day": by_day,
        "first": first.isoformat() if first else None,
        "last": last.isoformat() if last else None,
    }


def render_stats(stats: dict[str, Any], store_path: Path, out: Console) -> None:
    """The human-readable summary of :func:`event_stats`."""
    table = Table(title=f"event store {store_path}", show_header=False, title_justify="left")
    table.add_column(justify="left")
    table.add_column(justify="right")
    rate = stats["abandonment_rate"]
    rows = [
        ("events", f"{stats['events']:,}"),
        ("users", f"{stats['users']:,}"),
        ("sessions", f"{stats['sessions']:,}"),
        ("carts", f"{stats['carts']:,}"),
        ("  abandoned", f"{stats['abandoned_carts']:,}" + (f" ({rate:.1%})" if rate is not None else "")),
        ("purchases (orders)", f"{stats['purchases']:,}"),
        ("revenue", f"{stats['revenue']:,.2f} {'/'.join(stats['currencies'])}"),
        ("first event", str(stats["first"])),
        ("last event", str(stats["last"])),
    ]
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    by_type = Table("event type", "events", title="by type", title_justify="left")
    for name, n in stats["by_type"].items():
        by_type.add_row(name, f"{n:,}")
    out.print(by_type)
    by_month: dict[str, int] = {}
    for day, n in stats["by_day"].items():
        by_month[day[:7]] = by_month.get(day[:7], 0) + n
    months = Table("month", "events", title="by month", title_justify="left")
    for month, n in by_month.items():
        months.add_row(month, f"{n:,}")
    out.print(months)
