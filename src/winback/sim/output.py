"""Writing a simulation to files: the event log (Parquet or CSV) and the latent truth (Parquet).

Files are written under a temporary name and renamed, so a crash never leaves half a file behind.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from winback.errors import BadInputError
from winback.files import written_atomically
from winback.sim.shop import SimulationResult


def check_events_path(path: Path) -> Path:
    """``path`` if it names a file :func:`write_events` can write (checked before long work starts)."""
    if path.suffix.lower() not in (".parquet", ".csv"):
        raise BadInputError(f"{path}: expected a .parquet or .csv file name")
    return path


def write_events(table: pa.Table, path: Path | str) -> None:
    """Write events as Parquet or CSV, by the file's extension.

    Parameters
    ----------
    table
        Events, e.g. ``SimulationResult.events``.
    path
        ``.parquet`` (zstd-compressed) or ``.csv`` (a header, ISO-8601 UTC times such as
        ``2024-01-01T19:52:45Z``).
    """
    path = check_events_path(Path(path))
    suffix = path.suffix.lower()
    with written_atomically(path) as tmp:
        if suffix == ".parquet":
            pq.write_table(table, tmp, compression="zstd")
        else:
            iso = pc.strftime(table["timestamp"], format="%Y-%m-%dT%H:%M:%SZ")
            table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", iso)
            pacsv.write_csv(table, tmp)


def write_truth(result: SimulationResult, directory: Path | str) -> dict[str, Path]:
    """Write the latent truth: ``customers.parquet``, ``carts.parquet`` and ``cart_sessions.parquet``.

    Parameters
    ----------
    result
        A simulation.
    directory
        Created if missing.

    Returns
    -------
    dict
        The paths written, by name (``customers``, ``carts``: one row per abandoned cart,
        ``cart_sessions``: one row per browsing session with a cart and its true in-session purchase
        probability, see :class:`~winback.sim.shop.SimulationResult`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    frames = {"customers": result.customers, "carts": result.carts, "cart_sessions": result.cart_sessions}
    paths = {name: directory / f"{name}.parquet" for name in frames}
    for name, frame in frames.items():
        with written_atomically(paths[name]) as tmp:
            frame.to_parquet(tmp, index=False)
    return paths
