"""``streamqoe analyze``: find QoE regressions, the segment at fault and the viewers lost; write a report.

Sources: ``--db FILE`` (the collector's DuckDB file), ``--events FILE.ndjson`` (an export), or
``--collector URL --token T`` (not implemented yet: the collector's read API is not there).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from analysis.aggregates import Aggregates
from analysis.events_table import EventTable
from analysis.load import LoadError, from_ndjson
from analysis.pipeline import AnalysisError, run_analysis
from analysis.probe_reports import empty_probes, probe_end, probes_from_duckdb, probes_from_ndjson
from analysis.remote import fetch_to_files
from analysis.report_html import write_report
from analysis.sql_aggregate import aggregate_duckdb, default_window

log = structlog.get_logger()


def _parse_time(s: str) -> int:
    try:
        if s.isdigit():
            return int(s)
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {s!r} (RFC 3339, e.g. 2026-11-21T12:00Z, or ms)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``analyze`` options."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--db", type=Path, help="collector DuckDB file")
    src.add_argument("--events", type=Path, help="NDJSON export of viewer events")
    src.add_argument("--collector", help="collector base URL (needs --token; reads GET /v1/events, /v1/reports)")
    p.add_argument("--token", help="collector read token")
    p.add_argument(
        "--from", dest="from_ms", type=_parse_time, help="window start (RFC 3339 or ms); default: first event"
    )
    p.add_argument(
        "--to", dest="to_ms", type=_parse_time, help="window end (exclusive); default: last event + 1 ms"
    )
    p.add_argument("--baseline-minutes", type=int, default=30, help="leading minutes used as the baseline")
    p.add_argument("--out", type=Path, default=Path("report"), help="report directory")
    p.add_argument("--write-incidents", action="store_true", help="also insert incidents into the --db file")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 ok, 2 bad input (message on stderr, no traceback)."""

    def progress(msg: str) -> None:
        print(f"[analyze {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    try:
        source: EventTable | Aggregates
        probes = empty_probes()
        if args.collector:
            if not args.token:
                raise LoadError("--collector needs --token (a reader or analysis token)")
            to_ms = args.to_ms if args.to_ms is not None else int(time.time() * 1000)
            fetch_from = args.from_ms if args.from_ms is not None else to_ms - DEFAULT_REMOTE_WINDOW_MS
            progress(f"downloading events and probe reports from {args.collector}")
            download = args.out / "download"
            # events up to 7 days after the window too: they tell who came back (return rates)
            events_file, reports_file = asyncio.run(fetch_to_files(
                args.collector, args.token, fetch_from, to_ms + RETURN_LOOKAHEAD_MS, download))
            table = from_ndjson(events_file)
            in_window = table.t_ms[table.t_ms < to_ms] if table.n else table.t_ms
            if in_window.size == 0:
                raise AnalysisError(f"the collector has no viewer events between {_iso(fetch_from)} and {_iso(to_ms)}")
            # like --db/--events: without --from the window starts at the first event
            from_ms = args.from_ms if args.from_ms is not None else int(in_window.min())
            try:
                probes = probes_from_ndjson(reports_file, from_ms, to_ms)
            except ValueError as e:
                raise LoadError(str(e)) from None
            progress(f"{table.n} events, {probes.n} probe reports downloaded; analysing")
            source = table
        elif args.db:
            # the sums the analysis needs are computed inside DuckDB; events never become Python rows
            window = default_window(args.db, args.from_ms)
            if window is None:
                raise AnalysisError("no viewer events in the source")
            from_ms = args.from_ms if args.from_ms is not None else window[0]
            to_ms = args.to_ms if args.to_ms is not None else _with_probes(args.db, from_ms, window[1])
            progress("aggregating viewer events in DuckDB")
            source = aggregate_duckdb(args.db, from_ms, to_ms)
            probes = probes_from_duckdb(args.db, from_ms, to_ms)
            progress(f"{source.n_events} viewer events, {probes.n} probe reports in the window; analysing")
        else:
            progress("loading events")
            table = from_ndjson(args.events)
            if table.n == 0:
                raise AnalysisError("no viewer events in the source for that window")
            from_ms = args.from_ms if args.from_ms is not None else int(table.t_ms.min())
            to_ms = args.to_ms if args.to_ms is not None else _default_end(table.t_ms, from_ms)
            progress(f"{table.n} events loaded; analysing")
            source = table
        result = run_analysis(
            source,
            from_ms,
            to_ms,
            baseline_minutes=args.baseline_minutes,
            seed=args.seed,
            progress=progress,
            probes=probes,
        )
        write_report(result, args.out)
        if args.write_incidents and args.db:
            _write_incidents(args.db, result)
    except (LoadError, AnalysisError) as e:
        print(f"streamqoe analyze: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"streamqoe analyze: {e}", file=sys.stderr)
        return 2
    for inc in result.incidents:
        seen = f" (probes saw it too: {', '.join(inc.corroborated_by)})" if inc.corroborated_by else ""
        print(f"{inc.incident_id}\t{inc.summary}{seen}")
    for pi in result.probe_incidents:
        print(f"{pi.incident_id}\t{pi.summary}")
    print(
        f"report written to {args.out}/ ({len(result.incidents)} incidents, {len(result.winback_rows)} to win back)"
    )
    return 0


PROBE_GRACE_MS = 10 * 60_000
DEFAULT_REMOTE_WINDOW_MS = 3 * 3_600_000
"""``--collector`` without ``--from``: download the last 3 hours; the window starts at the first event."""
RETURN_LOOKAHEAD_MS = 7 * 86_400_000


def _iso(t_ms: int) -> str:
    return datetime.fromtimestamp(t_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _with_probes(db: Path, from_ms: int, viewer_end_ms: int) -> int:
    """The default window end, extended to cover probe sessions started up to 10 minutes after the
    last viewer event: probes run in real time and often end after the last beacon was written."""
    end = probe_end(db, from_ms, viewer_end_ms + PROBE_GRACE_MS)
    return viewer_end_ms if end is None else max(viewer_end_ms, end + 1)


def _default_end(t_ms: np.ndarray[Any, np.dtype[np.int64]], from_ms: int) -> int:
    """End of the first contiguous stretch of events (a gap > 30 min ends it): later events are
    returning viewers days later, used for return rates but not part of the window."""
    t = np.sort(t_ms[t_ms >= from_ms])
    gaps = np.flatnonzero(np.diff(t) > 30 * 60_000)
    return int(t[gaps[0]] if gaps.size else t[-1]) + 1


def _write_incidents(db: Path, result: object) -> None:
    import json

    import duckdb

    from analysis.load import INCIDENTS_DDL
    from analysis.pipeline import AnalysisResult

    assert isinstance(result, AnalysisResult)
    con = duckdb.connect(str(db))
    try:
        con.execute(INCIDENTS_DDL)
        for inc in result.incidents:
            con.execute("DELETE FROM incidents WHERE incident_id = ?", [inc.incident_id])
            con.execute(
                "INSERT INTO incidents VALUES (?, ?, ?, ?, ?)",
                [inc.incident_id, inc.start_ms, inc.end_ms, json.dumps(inc.segment), inc.summary],
            )
        for pi in result.probe_incidents:
            con.execute("DELETE FROM incidents WHERE incident_id = ?", [pi.incident_id])
            con.execute(
                "INSERT INTO incidents VALUES (?, ?, ?, ?, ?)",
                [pi.incident_id, pi.start_ms, pi.end_ms, json.dumps(pi.segment), pi.summary],
            )
    except duckdb.Error as e:
        raise LoadError(f"{db}: cannot write incidents ({e})") from None
    finally:
        con.close()
