"""``streamqoe audience``: generate synthetic viewer events (the audience model), optionally with an
incident, to an NDJSON file and/or POSTed in batches to a collector's ``/v1/events``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from analysis.audience import AudienceConfig, AudienceTruth, IncidentSpec, generate, iter_wire_events
from analysis.export import write_ndjson


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``audience`` options."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=int, default=120)
    p.add_argument("--start-ms", type=int, help="window start, ms since the epoch (default: now − minutes)")
    p.add_argument("--rate", type=float, default=200.0, help="mean arrivals per minute")
    p.add_argument(
        "--incident", help='segment=start_min-end_min[:stall_add], e.g. "cdn=cdn-b,region=eu@60-80:0.12"'
    )
    p.add_argument("--out", type=Path, help="NDJSON file to write")
    p.add_argument("--truth", type=Path, help="write the ground truth (viewers lost) as JSON here")
    p.add_argument("--collector", help="collector base URL: POST batches to /v1/events")
    p.add_argument("--token", help="collector ingest token")
    p.add_argument("--batch", type=int, default=500)


def parse_incident(text: str, start_ms: int) -> IncidentSpec:
    """``"cdn=cdn-b,region=eu@60-80:0.12"`` → IncidentSpec (minutes relative to the window start)."""
    try:
        seg_s, rest = text.split("@", 1)
        span, _, add = rest.partition(":")
        a, b = (int(x) for x in span.split("-", 1))
        seg = dict(kv.split("=", 1) for kv in seg_s.split(","))
    except ValueError:
        raise ValueError(
            f"--incident: expected dim=value[,dim=value]@start-end[:stall_add], got {text!r}"
        ) from None
    return IncidentSpec(seg, start_ms + a * 60_000, start_ms + b * 60_000, float(add) if add else 0.12)


async def post_events(url: str, token: str | None, events: list[dict[str, Any]], batch: int) -> int:
    """POST in batches with retries (exponential backoff on 429/5xx/connection errors); returns sent."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    sent = 0
    async with aiohttp.ClientSession(headers=headers) as s:
        for i in range(0, len(events), batch):
            body = events[i : i + batch]  # the collector takes a JSON array; event_id makes retries idempotent
            for attempt in range(6):
                try:
                    async with s.post(url.rstrip("/") + "/v1/events", json=body) as r:
                        if r.status in (401, 403):
                            raise PermissionError(f"collector refused the token (HTTP {r.status})")
                        if r.status == 429 or r.status >= 500:
                            raise aiohttp.ClientResponseError(r.request_info, (), status=r.status)
                        if r.status >= 400:
                            raise ValueError(f"collector rejected a batch: HTTP {r.status} {await r.text()}")
                        break
                except (aiohttp.ClientError, TimeoutError):
                    if attempt == 5:
                        raise
                    await asyncio.sleep(0.2 * 2**attempt)
            sent += len(events[i : i + batch])
    return sent


def run(args: argparse.Namespace) -> int:
    """Exit status 0, or 2 with a message on bad input / collector trouble."""
    start = args.start_ms if args.start_ms is not None else int(time.time() * 1000) - args.minutes * 60_000
    start -= start % 60_000
    try:
        inc = parse_incident(args.incident, start) if args.incident else None
        table, truth = generate(
            AudienceConfig(
                start_ms=start, minutes=args.minutes, seed=args.seed, arrivals_per_min=args.rate, incident=inc
            )
        )
    except ValueError as e:
        print(f"streamqoe audience: {e}", file=sys.stderr)
        return 2
    print(
        f"generated {table.n} events, {truth.n_sessions} sessions, {truth.viewers_lost} viewers lost to the "
        f"incident (ground truth)",
        file=sys.stderr,
    )
    if args.out:
        write_ndjson(table, args.out)
    if args.truth:
        _write_truth(args.truth, truth, inc)
    if args.collector:
        try:
            n = asyncio.run(
                post_events(args.collector, args.token, list(iter_wire_events(table)), args.batch)
            )
        except (PermissionError, ValueError) as e:
            print(f"streamqoe audience: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # aiohttp's connection errors: the collector is down or unreachable
            print(f"streamqoe audience: cannot reach the collector at {args.collector}: {e}", file=sys.stderr)
            return 2
        print(f"posted {n} events to {args.collector}", file=sys.stderr)
    return 0


def _write_truth(path: Path, truth: AudienceTruth, inc: IncidentSpec | None) -> None:
    path.write_text(
        json.dumps(
            {
                "viewers_lost": truth.viewers_lost,
                "sessions": truth.n_sessions,
                "affected_sessions": int(truth.affected.sum()),
                "incident": None
                if inc is None
                else {
                    "segment": dict(inc.segment),
                    "start_ms": inc.start_ms,
                    "end_ms": inc.end_ms,
                    "stall_ratio_add": inc.stall_ratio_add,
                },
            },
            indent=1,
        ),
        encoding="utf-8",
    )
