"""The store's maintenance thread: checkpoints and staged-row moves, off the ack path.

``StoreMaintainer`` polls the main WAL's size; when it reaches the store's ``checkpoint_wal_bytes`` it calls
``Store.maintain(checkpoint=True)``: the checkpoint, during which the writer commits to staging, then the
move of the staged rows into the main tables (see ``collector.store``). Staged rows left by a failed
move are moved at the next poll.

Priority. In the collector's process the thread keeps the process's priority: lowering it (``nice``) was
tried and made things worse on a busy machine, as the checkpoint and the moves then took many times longer
(more rows to stage and move) and DuckDB's own locks held by this thread made the writer wait (priority
inversion; there the GIL is shared with the event loop too). In a store process of its own
(``collector.store_process``) the checkpoint's CPU is what slows the acknowledgements around it (the
writer's commits to staging stay fast), so there ``low_priority`` runs each maintenance run under Linux's
``SCHED_IDLE`` policy: it gets the CPU the ingest path leaves idle. Should a run still be going after
``escalate_s`` (a machine with no idle CPU), the thread is put back to the normal policy, so the main
tables are never held for long. Measured in docs/performance.md (session 7).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

import structlog

from collector.store import MaintenanceRun, Store

log = structlog.get_logger()


class StoreMaintainer:
    """Runs ``store.maintain()`` on its own thread when due. ``on_run`` is called (on that thread) after
    every run that did something."""

    def __init__(self, store: Store, *, poll_s: float = 0.05, retry_s: float = 1.0,
                 on_run: Callable[[MaintenanceRun], None] | None = None, low_priority: bool = False,
                 escalate_s: float = 1.0) -> None:  # fmt: skip
        self._store = store
        self._poll_s = poll_s
        self._retry_s = retry_s
        self._on_run = on_run
        self._low_priority = low_priority and hasattr(os, "SCHED_IDLE")
        self._escalate_s = escalate_s
        self.escalations = 0
        """Runs that outlasted ``escalate_s`` at low priority and were put back to the normal policy."""
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
            run = self._maintain(checkpoint=True)
        elif store.staged_pending():
            run = self._maintain(checkpoint=False)
        else:
            return None
        if run.checkpoint_s is not None:
            log.info("store_checkpoint", checkpoint_s=round(run.checkpoint_s, 3), moved_rows=run.moved_rows,
                     move_s=round(run.move_s, 3))  # fmt: skip
        if self._on_run is not None:
            self._on_run(run)
        return run

    def _maintain(self, *, checkpoint: bool) -> MaintenanceRun:
        if not self._low_priority:
            return self._store.maintain(checkpoint=checkpoint)
        # the move of staged rows at idle priority too: tried at normal priority (the writer appends to the
        # same tables, so DuckDB's locks might make it wait for an idle thread), p99 was higher (56-67 ms
        # against 50-53 ms at 50,000 events/s): the move's CPU hurts more than any lock wait
        tid = threading.get_native_id()
        _set_policy(tid, idle=True)
        timer = threading.Timer(self._escalate_s, self._escalate, args=(tid,))
        timer.daemon = True
        timer.start()
        try:
            return self._store.maintain(checkpoint=checkpoint)
        finally:
            timer.cancel()
            _set_policy(tid, idle=False)

    def _escalate(self, tid: int) -> None:
        self.escalations += 1
        log.info("store_maintenance_escalated", after_s=self._escalate_s)
        _set_policy(tid, idle=False)

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


def _set_policy(tid: int, *, idle: bool) -> None:
    """Thread ``tid`` to ``SCHED_IDLE`` or back to ``SCHED_OTHER`` (Linux; a thread's own policy)."""
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    with contextlib.suppress(OSError):  # the thread has ended, or the call is refused: keep going
        os.sched_setscheduler(tid, policy, os.sched_param(0))
