"""The store's maintenance thread: checkpoints and staged-row moves, off the ack path.

``StoreMaintainer`` polls the main WAL's size; when it reaches the store's ``checkpoint_wal_bytes`` it calls
``Store.maintain(checkpoint=True)`` (the writer commits to staging meanwhile, see ``collector.store``), and
when staged rows are left over and the writer has not moved them (it is idle) it calls
``Store.maintain(checkpoint=False)`` to move them.

A checkpoint costs about 0.5–0.9 s of one core per 64 MiB of WAL, on the thread that runs it. On a
machine with few cores that CPU would come out of the event loop and the writer, i.e. the ack latency,
so on Linux this thread lowers its own priority (``nice``): the checkpoint then takes the idle CPU, and
takes longer only when the machine is busy (the writer commits to staging meanwhile, so nothing waits).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import structlog

from collector.store import MaintenanceRun, Store

log = structlog.get_logger()


class StoreMaintainer:
    """Runs ``store.maintain()`` on its own thread when due. ``on_run`` is called (on that thread) after
    every run that did something."""

    def __init__(self, store: Store, *, poll_s: float = 0.05, idle_s: float = 0.2, retry_s: float = 1.0,
                 nice: int = 10, on_run: Callable[[MaintenanceRun], None] | None = None) -> None:  # fmt: skip
        self._store = store
        self._nice = nice
        self._poll_s = poll_s
        self._idle_s = idle_s
        self._retry_s = retry_s
        self._on_run = on_run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="store-maintainer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the run in progress, if any (the store's ``close()`` moves what is left)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def run_once(self) -> MaintenanceRun | None:
        """One poll: checkpoint if due, else move leftover staged rows; None when nothing was due."""
        store = self._store
        if store.checkpoint_due():
            run = store.maintain(checkpoint=True)
        elif store.staged_pending(self._idle_s):
            run = store.maintain(checkpoint=False)
        else:
            return None
        if run.checkpoint_s is not None:
            log.info("store_checkpoint", checkpoint_s=round(run.checkpoint_s, 3), moved_rows=run.moved_rows,
                     diverted_s=round(run.diverted_s, 3))  # fmt: skip
        if self._on_run is not None:
            self._on_run(run)
        return run

    def _loop(self) -> None:
        if self._nice and sys.platform == "linux":  # a thread id is a task id on Linux only
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
            except OSError as e:
                log.warning("store_maintainer_nice_failed", error=repr(e))
        while not self._stop.is_set():
            try:
                ran = self.run_once()
            except Exception as e:  # the store stays usable: the writer has the main tables back
                log.error("store_maintenance_failed", error=repr(e))
                self._stop.wait(self._retry_s)
                continue
            if ran is None:
                self._stop.wait(self._poll_s)
