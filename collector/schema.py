"""The store's DDL: the contract between the collector (writer) and analysis (reader).

DuckDB, because analysis scans millions of events by column (see docs/collector.md, "Why DuckDB").
Every statement is idempotent (``IF NOT EXISTS``) so the collector applies it at every start.
Columns are only ever added, never renamed or retyped, without telling the analysis owner.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
"""Version of this DDL, stored in ``collector_meta``."""

VIEWER_EVENT_COLUMNS: tuple[str, ...] = (
    "event_id", "viewer_id", "session_id", "room", "t_ms", "type",
    "region", "isp", "cdn", "device", "app_version",
    "startup_ms", "stall_count", "stall_ms", "watch_ms", "height", "bitrate_kbps",
    "received_ms",
)  # fmt: skip

DDL: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS viewer_events (
        event_id     VARCHAR PRIMARY KEY,  -- idempotency key
        viewer_id    VARCHAR NOT NULL,
        session_id   VARCHAR NOT NULL,
        room         VARCHAR NOT NULL,
        t_ms         BIGINT  NOT NULL,     -- event time, ms since the Unix epoch (UTC)
        type         VARCHAR NOT NULL,     -- join | leave | heartbeat | qoe
        region       VARCHAR,
        isp          VARCHAR,
        cdn          VARCHAR,
        device       VARCHAR,
        app_version  VARCHAR,
        startup_ms   DOUBLE,
        stall_count  INTEGER,
        stall_ms     DOUBLE,
        watch_ms     DOUBLE,
        height       INTEGER,
        bitrate_kbps DOUBLE,
        received_ms  BIGINT  NOT NULL      -- collector commit clock, ms since the Unix epoch
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS probe_reports (
        report_id        VARCHAR PRIMARY KEY,  -- idempotency key (UUID)
        probe_id         VARCHAR NOT NULL,
        probe_version    VARCHAR NOT NULL,
        region           VARCHAR,
        room             VARCHAR,
        target_url       VARCHAR NOT NULL,
        signaling        VARCHAR NOT NULL,
        started_ms       BIGINT  NOT NULL,     -- t0, ms since the Unix epoch
        duration_s       DOUBLE  NOT NULL,
        failure          VARCHAR,              -- stable failure code, NULL = joined and received media
        failure_message  VARCHAR,
        labels           JSON    NOT NULL,     -- {"isp": …, "cdn": …}
        mode             VARCHAR NOT NULL,
        ttff_ms          DOUBLE,
        stall_ratio      DOUBLE,
        freeze_count     INTEGER,
        total_freezes_s  DOUBLE,
        loss_pct         DOUBLE,               -- video stream, RFC 3550
        hd_share         DOUBLE,
        fps_mean         DOUBLE,
        latency_p50_ms   DOUBLE,
        rtt_ms           DOUBLE,
        body             JSON    NOT NULL,     -- the whole report as received (validated)
        received_ms      BIGINT  NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS incidents (
        incident_id  VARCHAR PRIMARY KEY,
        start_ms     BIGINT  NOT NULL,
        end_ms       BIGINT,                   -- NULL = still open
        segment      JSON    NOT NULL,         -- {"region": "eu", "isp": "…"}
        summary      VARCHAR NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS collector_meta (
        key   VARCHAR PRIMARY KEY,
        value VARCHAR NOT NULL
    )
    """,
)

STAGED_TABLES: tuple[str, ...] = ("viewer_events", "probe_reports", "incidents")
"""The tables ingest writes; each has a staging copy (``staging_ddl``)."""


def staging_ddl(catalog: str) -> tuple[str, ...]:
    """DDL of the staging copies of ``STAGED_TABLES`` in the attached database ``catalog``.

    Same columns and primary keys as the tables above, plus ``seq``: the number of the writer's group
    that committed the row, so that a move can take every group up to one number (``collector.store``).
    Not part of the contract with analysis: the collector empties and removes the staging file at a
    clean stop.
    """
    out: list[str] = []
    for stmt in DDL:
        for table in STAGED_TABLES:
            head = f"CREATE TABLE IF NOT EXISTS {table} ("
            if head in stmt:
                out.append(stmt.replace(head, f"CREATE TABLE {catalog}.{table} (\n        seq BIGINT NOT NULL,", 1))
    if len(out) != len(STAGED_TABLES):
        raise AssertionError("staging_ddl: a staged table's DDL was not found")
    return tuple(out)
