"""A winback command started by another process can be told to stop when that process is gone.

The live demo starts ``winback serve``, ``consume``, ``detect`` and ``worker`` as child processes and
stops them when it ends, on Ctrl-C and on errors too. What it cannot do is stop them when it is killed
outright (SIGKILL, a crash of the interpreter, a closed terminal): they would be left running, orphaned.
So it sets ``WINBACK_PARENT_PID`` to its own process id in their environment, and each command
(:func:`watch_parent`, called by the ``winback`` entry point) then checks twice a second that its parent
is still that process; once it is not, the command sends itself SIGTERM and shuts down as it does on
any SIGTERM (after the message or batch in hand).
"""

from __future__ import annotations

import os
import signal
import threading
import time

from winback.errors import BadInputError

__all__ = ["PARENT_PID", "watch_parent"]

#: The environment variable naming the process whose end stops this one.
PARENT_PID = "WINBACK_PARENT_PID"


def watch_parent(interval: float = 0.5) -> threading.Thread | None:
    """Stop this process (SIGTERM to itself) once its parent is no longer the process ``WINBACK_PARENT_PID``
    names; a daemon thread that looks every ``interval`` seconds, or None when the variable is not set."""
    value = os.environ.get(PARENT_PID, "").strip()
    if not value:
        return None
    try:
        parent = int(value)
    except ValueError:
        raise BadInputError(f"{PARENT_PID}={value!r}: expected a process id") from None

    def watch() -> None:
        while os.getppid() == parent:  # a process whose parent died is adopted by another
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="winback-lifeline", daemon=True)
    thread.start()
    return thread
