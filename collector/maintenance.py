"""The store's maintenance thread: checkpoints and staged-row moves, off the ack path.

``StoreMaintainer`` polls the main WAL's size; when it reaches the store's ``checkpoint_wal_bytes`` it calls
``Store.maintain(checkpoint=True)``: the checkpoint, during which the writer commits to staging, then the
move of the staged rows into the main tables (see ``collector.store``). Staged rows left by a failed
move are moved at the next poll.

The thread keeps the process's priority: lowering it (``nice``) was tried and made things worse on a busy
machine, as the checkpoint and the moves then took many times longer (more rows to stage and move) and
DuckDB's own locks held by this thread made the writer wait (priority inversion).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from collector.store import MaintenanceRun, Store

log = structlog.get_logger()


class StoreMaintainer:
    """Runs ``store.maintain()`` on its own thread when due. ``on_run`` is called (on that thread) after
    every run that did something."""

    def __init__(self, store: Store, *, poll_s: float = 0.05, retry_s: float = 1.0,
                 on_run: Callable[[MaintenanceRun], None] | None = None) -> None:  # fmt: skip
        self._store = store
        self._poll_s = poll_s
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
        elif store.staged_pending():
            run = store.maintain(checkpoint=False)
        else:
            return None
        if run.checkpoint_s is not None:
            log.info("store_checkpoint", checkpoint_s=round(run.checkpoint_s, 3), moved_rows=run.moved_rows,
                     move_s=round(run.move_s, 3))  # fmt: skip
        if self._on_run is not None:
            self._on_run(run)
        return run

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_once()
            except Exception as e:  # the store stays usable: the writer has the main tables back
                log.error("store_maintenance_failed", error=repr(e))
                self._stop.wait(self._retry_s)
                continue
            if ran is None:
                self._stop.wait(self._poll_s)
