"""Reference viewer: headless Chromium joins a WHEP stream; its getStats, as JSON next to a probe report.

    scripts/reference_viewer URL --duration S --out FILE.json [--chromium /usr/bin/chromium]

A local aiohttp server (127.0.0.1, ephemeral port) serves reference_viewer.html, proxies the page's
WHEP POST to URL (so any WHEP server works, CORS or not; the DELETE is sent from here at the end)
and receives the page's result. Chromium gathers only loopback candidates
(``--allow-loopback-in-peer-connection``, no STUN), so the target must be on this host's loopback.
Run it inside a network namespace with only ``lo`` (``ip netns exec NS ...``, as tests/test_fidelity.py
does) to be sure the browser reaches nothing else.

Output: ``{"url", "chromium", "ttff_ms", "marks", "final" (last inbound-rtp video stats),
"samples" (every 250 ms), "resolution_timeline" ([t_s, w, h] from requestVideoFrameCallback), ...}``.
All times are relative to the page's t0, taken just before createOffer (the probe's t0 is just before
its first signaling request; the difference is offer creation and ICE gathering, ~10-300 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiohttp import web

PAGE = Path(__file__).with_name("reference_viewer.html")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
    # host candidates as IPs, not mDNS names (nothing to resolve them on a loopback-only netns)
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
]


async def view(url: str, duration_s: float, chromium: str = CHROMIUM, timeout_s: float = 40.0) -> dict[str, Any]:
    """Run one Chromium session against WHEP ``url`` for ``duration_s``; the page's result plus envelope."""
    result: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    state: dict[str, Any] = {"location": None, "whep_status": None}
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def whep(request: web.Request) -> web.Response:
        offer = await request.text()
        async with http.post(url, data=offer, headers={"Content-Type": "application/sdp"}) as resp:
            body = await resp.text()
            state["whep_status"] = resp.status
            if resp.headers.get("Location"):
                state["location"] = urljoin(url, resp.headers["Location"])
            return web.Response(status=resp.status, text=body, content_type="application/sdp")

    async def posted(request: web.Request) -> web.Response:
        if not result.done():
            result.set_result(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/whep", whep)
    app.router.add_post("/result", posted)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    profile = tempfile.mkdtemp(prefix="sq-chromium-")
    log_path = Path(profile) / "chromium.log"
    # blocking, but once and before any media flows
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()  # noqa: ASYNC221
    started = time.time()
    proc = await asyncio.create_subprocess_exec(
        chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
        f"http://127.0.0.1:{port}/?duration={duration_s}",
        stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"),  # noqa: SIM115, ASYNC230 (owned by the process)
    )
    out: dict[str, Any]
    try:
        out = await asyncio.wait_for(result, duration_s + timeout_s)
    except TimeoutError:
        tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        out = {"error": f"no result from the page within {duration_s + timeout_s:g} s", "chromium_log": tail}
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if state["location"]:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with http.delete(state["location"]) as resp:
                    await resp.read()
        await http.close()
        await runner.cleanup()
        shutil.rmtree(profile, ignore_errors=True)
    marks = out.get("marks") or {}
    return {
        "kind": "chromium_reference",
        "url": url,
        "chromium": version,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": out.get("duration_s"),
        "whep_status": state["whep_status"],
        "ttff_ms": marks.get("first_frame_ms"),
        **out,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="WHEP URL, e.g. http://127.0.0.1:8080/whep/test")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds from the page's t0")
    parser.add_argument("--out", default="-", help="JSON output file ('-': stdout)")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", CHROMIUM))
    args = parser.parse_args(argv)
    if not shutil.which(args.chromium):
        print(f"reference_viewer: {args.chromium} not found (Debian package chromium)", file=sys.stderr)
        return 2
    out = asyncio.run(view(args.url, args.duration, args.chromium))
    text = json.dumps(out, indent=1)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text)
    return 1 if out.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
