"""The dashboard's figures: the report's sections, computed in the background and kept until the data
changes.

A section of the report takes from a fraction of a second to many seconds on a large shop, so a page
never computes one while the browser waits for more than :data:`FIRST_WAIT` seconds. :class:`Dashboard`
keeps, per set of filters, the last computed HTML of every section and the data's *stamp* it was
computed from (the size and modification time of the event store, the decision log and the deployed
models' ``current`` files). One background thread computes what pages ask for, the asked sections first,
all of one set of filters in one :class:`~winback.measure.data.MeasureData` (the sections share its
caches); with nothing else asked, it goes on to the filters' other sections, so the next page is ready.
A page (or its periodic refresh) looks at the stamp at most every ``dashboard_refresh_seconds``: when the
data changed, the old figures stay on screen while the new ones are computed, then replace them.

DuckDB lets one process write a file or several read it, never both. The dashboard opens the event store
and the decision log read-only and only while it computes, so a writer (``winback ingest``, ``plan``,
``outcomes``) that holds the file makes the computation wait, not fail: the figures of before are shown
with a note saying so, and the computation is tried again. While the dashboard computes, a writer
waits for it (:func:`winback.embedded.connect_waiting`, ``WINBACK_LOCK_WAIT_SECONDS``).
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from winback.config import Settings
from winback.embedded import is_lock_error
from winback.errors import BadInputError, WinbackError
from winback.measure.data import Filters, MeasureData
from winback.measure.report import SECTIONS, Section

__all__ = ["FIRST_WAIT", "PAGES", "Computed", "Dashboard", "SectionState", "data_stamp"]

log = logging.getLogger("winback.serve")

#: The report's sections, in order, with their page titles.
PAGES: dict[str, str] = {
    "summary": "Summary",
    "kpis": "KPIs",
    "holdout": "Holdout comparison",
    "policies": "Policies",
    "segments": "Segments",
    "at-risk": "At-risk customers",
    "model-health": "Model health",
    "demand": "Demand signals",
}
_MAKERS = dict(SECTIONS)
#: How long a page waits for a section that is not computed yet before it answers with a placeholder.
FIRST_WAIT = 0.5
#: Sets of filters kept (the least recently used go first).
MAX_VIEWS = 16

Stamp = tuple[tuple[str, int, int], ...]


def data_stamp(settings: Settings) -> Stamp:
    """What the figures depend on, cheaply: size and modification time of the event store, the decision
    log (and their write-ahead logs) and the deployed models' ``current`` files."""
    home = settings.home
    paths = [settings.store_path, home / "decisions.duckdb"]
    paths += [p.with_name(p.name + ".wal") for p in paths]
    if settings.models_dir.is_dir():
        paths += sorted(settings.models_dir.glob("*/current"))
    found = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        found.append((_path_label(path, home), stat.st_mtime_ns, stat.st_size))
    return tuple(found)


def _locked(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is DuckDB refusing a file another process holds."""
    seen: BaseException | None = error
    while seen is not None:
        if is_lock_error(seen):
            return True
        seen = seen.__cause__
    return "could not set lock" in str(error).lower()


@dataclass(frozen=True)
class Computed:
    """A section as last computed, from the data of ``stamp``, at ``at`` (UTC)."""

    section: Section
    stamp: Stamp
    at: datetime
    seconds: float

    @property
    def version(self) -> str:
        """Changes whenever the section is recomputed (the page's refresh compares it)."""
        return f"{self.at.timestamp():.6f}"


@dataclass
class _View:
    """Everything the dashboard holds for one set of filters."""

    filters: Filters
    stamp: Stamp | None = None  # the data's stamp at the last look
    checked: float = 0.0  # monotonic time of the last look
    sections: dict[str, Computed] = field(default_factory=dict)
    wanted: list[str] = field(default_factory=list)  # asked for and not computed from `stamp`, first first
    queued: bool = False
    running: bool = False
    busy: str | None = None  # why the last computation could not read the data
    policies: list[str] = field(default_factory=list)
    period: str | None = None

    def current(self, section_id: str) -> bool:
        found = self.sections.get(section_id)
        return found is not None and found.stamp == self.stamp


@dataclass(frozen=True)
class SectionState:
    """What a page shows for a section: its last computed form (None: never computed for these filters),
    whether a newer one is being computed, and why the data could not be read, if it could not."""

    computed: Computed | None
    computing: bool
    busy: str | None
    policies: list[str]
    period: str | None


class Dashboard:
    """The figures of the dashboard's pages, computed by one background thread; see the module
    docstring. Thread-safe; :meth:`close` stops the thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.refresh_seconds = settings.dashboard_refresh_seconds
        self._views: OrderedDict[Filters, _View] = OrderedDict()
        self._queue: deque[_View] = deque()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- what pages call ---------------------------------------------------------------------------

    def section(self, filters: Filters, section_id: str, *, wait: float = FIRST_WAIT) -> SectionState:
        """The section ``section_id`` of ``filters`` as it stands, asking for it to be computed when it
        is missing or older than the data; waits up to ``wait`` seconds for a missing one."""
        if section_id not in PAGES:
            raise KeyError(section_id)
        deadline = time.monotonic() + wait
        with self._changed:
            view = self._view(filters)
            self._look(view)
            if not view.current(section_id):
                self._want(view, section_id)
            while section_id not in view.sections and not view.busy and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return SectionState(
                view.sections.get(section_id),
                not view.current(section_id),
                view.busy,
                list(view.policies),
                view.period,
            )

    def close(self) -> None:
        """Stop the background thread (a computation under way finishes its section first)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    # -- bookkeeping (callers hold self._changed) ---------------------------------------------------

    def _view(self, filters: Filters) -> _View:
        view = self._views.get(filters)
        if view is None:
            view = self._views[filters] = _View(filters)
            while len(self._views) > MAX_VIEWS:
                oldest = next(iter(self._views))
                if self._views[oldest].running or self._views[oldest].queued:
                    break
                del self._views[oldest]
        self._views.move_to_end(filters)
        return view

    def _look(self, view: _View) -> None:
        """Re-read the data's stamp if it was last read over ``refresh_seconds`` ago; a changed stamp
        makes the computed sections stale. (A computation a writer's lock stopped is tried again when a
        page or its refresh next asks for a section.)"""
        now = time.monotonic()
        if view.stamp is not None and now - view.checked < self.refresh_seconds:
            return
        view.checked = now
        stamp = data_stamp(self.settings)
        if stamp != view.stamp:
            view.stamp = stamp
            view.wanted = [s for s in view.wanted if not view.current(s)]
            for section_id in view.sections:  # what was shown is computed again, in the page's order
                if section_id not in view.wanted:
                    view.wanted.append(section_id)
            if view.wanted:
                self._enqueue(view)

    def _want(self, view: _View, section_id: str) -> None:
        if section_id in view.wanted:
            view.wanted.remove(section_id)
        view.wanted.insert(0, section_id)
        self._enqueue(view)

    def _enqueue(self, view: _View) -> None:
        if not view.queued and not view.running:
            view.queued = True
            self._queue.append(view)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="winback-dashboard", daemon=True)
            self._thread.start()
        self._changed.notify_all()

    # -- the background thread ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                view = self._queue.popleft()
                view.queued, view.running = False, True
                stamp = view.stamp
            try:
                self._compute(view, stamp)
            except Exception as error:  # never let the thread die: the pages say it, until the data changes
                log.exception("dashboard: reading the data failed")
                with self._changed:
                    failed = [s for s in PAGES if not view.current(s)]
                for section_id in failed:
                    self._publish(view, section_id, _failed(section_id, error), stamp, 0.0)
            finally:
                with self._changed:
                    view.running = False
                    if view.wanted and not view.busy and not self._closed:
                        self._enqueue(view)  # asked for while the last section was computed
                    self._changed.notify_all()

    def _next(self, view: _View, stamp: Stamp | None) -> str | None:
        """The next section to compute from the data of ``stamp``: the first asked for, else (when no
        other filters wait) the first stale one; None when the data changed since (a new computation
        starts from the new stamp)."""
        with self._changed:
            if self._closed or view.stamp != stamp:
                return None
            if view.wanted:
                return view.wanted[0]
            if self._queue:
                return None
            return next((s for s in PAGES if not view.current(s)), None)

    def _compute(self, view: _View, stamp: Stamp | None) -> None:
        if self._next(view, stamp) is None:
            return
        try:
            data = MeasureData(self.settings)
        except BadInputError as error:  # no event store (yet): said where the figures would be
            self._publish_all(view, stamp, str(error))
            return
        except Exception as error:
            if not _locked(error):
                raise
            self._set_busy(view)
            return
        with data:
            try:
                policies, period = data.policies(), data.period(view.filters)
                with self._changed:
                    view.busy = None
                    view.policies, view.period = policies, period.label() if period else None
                while (section_id := self._next(view, stamp)) is not None:
                    started = time.perf_counter()
                    try:
                        section = _MAKERS[section_id](data, view.filters)
                    except Exception as error:
                        if _locked(error):
                            raise
                        log.exception("dashboard: the %s section failed", section_id)
                        section = _failed(section_id, error)
                    self._publish(view, section_id, section, stamp, time.perf_counter() - started)
            except Exception as error:
                if not _locked(error):  # the decision log, opened for a moment, was being written
                    raise
                self._set_busy(view)

    def _publish(self, view: _View, section_id: str, section: Section, stamp: Any, seconds: float) -> None:
        with self._changed:
            view.sections[section_id] = Computed(section, stamp, datetime.now(UTC), seconds)
            if section_id in view.wanted and stamp == view.stamp:
                view.wanted.remove(section_id)
            self._changed.notify_all()

    def _publish_all(self, view: _View, stamp: Stamp | None, message: str) -> None:
        for section_id in PAGES:
            self._publish(view, section_id, _said(section_id, message), stamp, 0.0)

    def _set_busy(self, view: _View) -> None:
        with self._changed:
            view.busy = (
                "The event store or the decision log is being written by another process (winback ingest, "
                "plan or outcomes) and cannot be read until it finishes"
            )
            self._changed.notify_all()
        log.info("dashboard: the event store or decision log is locked by a writer; retrying")


def _said(section_id: str, message: str) -> Section:
    return Section(section_id, PAGES[section_id], f'<p class="warning">{html.escape(message)}</p>')


def _failed(section_id: str, error: Exception) -> Section:
    """What a page says when computing its section failed (winback's own errors say why)."""
    why = str(error) if isinstance(error, WinbackError) else type(error).__name__
    return _said(
        section_id,
        f"This section could not be computed ({why}); the service's log has the details, and "
        "`winback report` shows the same figures from the command line.",
    )


def _path_label(path: Path, home: Path) -> str:
    return str(path.relative_to(home)) if path.is_relative_to(home) else str(path)
