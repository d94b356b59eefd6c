"""Network namespaces for tests: a namespace joined by a veth pair to a second one (or to the test's own).

Every name carries a per-run tag, so parallel runs never collide, and ``Link.close()`` (or the
context manager) deletes the namespaces, which deletes the veth pair and every nftables table and
qdisc in them. Nothing here routes anywhere: the namespaces have no default route, and the only
addresses are the two ends of the veth pair (10.R.S.1/30 and .2/30, R and S random per run).

Impairments, no netem needed (the test kernel has none):
- ``drop_pct(ns, pct, src)`` : nftables ``numgen random mod 100 < pct`` with a counter, on the input
  hook of ``ns``, for UDP packets from ``src``; ``drop_counters(ns)`` reads (dropped, passed).
- ``rate_limit(ns, dev, rate)`` : a TBF qdisc on ``dev``'s egress.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

NFT_TABLE = "sq_impair"


def available() -> str | None:
    """None if namespaces can be used here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, nftables)"
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    probe = f"sqprobe{os.getpid() % 100000}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def run(argv: Sequence[str], check: bool = True) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def in_ns(ns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed to run inside ``ns`` (None: the test's own namespace)."""
    return list(argv) if ns is None else ["ip", "netns", "exec", ns, *argv]


@dataclass
class Link:
    """Namespace ``a`` (veth ``dev_a``, ``ip_a``) ↔ ``b`` (``dev_b``, ``ip_b``); ``b`` None: root ns."""

    a: str
    b: str | None
    dev_a: str
    dev_b: str
    ip_a: str
    ip_b: str
    created: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, *, peer_in_root: bool = False) -> Link:
        tag = f"{os.getpid() % 10000}{random.randrange(1000):03d}"
        r, s = random.randrange(64, 250), random.randrange(0, 64) * 4
        link = cls(
            a=f"sqa{tag}",
            b=None if peer_in_root else f"sqb{tag}",
            dev_a=f"sqva{tag}",
            dev_b=f"sqvb{tag}",
            ip_a=f"10.{r}.{s // 256}.{s % 256 + 1}",
            ip_b=f"10.{r}.{s // 256}.{s % 256 + 2}",
        )
        try:
            link._setup()
        except Exception:
            link.close()
            raise
        return link

    def _setup(self) -> None:
        for ns in (self.a, self.b):
            if ns is not None:
                run(["ip", "netns", "add", ns])
                self.created.append(ns)
                run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "link", "add", self.dev_a, "type", "veth", "peer", "name", self.dev_b])
        if self.b is None:
            self.created.append(f"link:{self.dev_b}")  # deleting ns a deletes the pair anyway
        run(["ip", "link", "set", self.dev_a, "netns", self.a])
        if self.b is not None:
            run(["ip", "link", "set", self.dev_b, "netns", self.b])
        run(["ip", "-n", self.a, "addr", "add", f"{self.ip_a}/30", "dev", self.dev_a])
        run([*self._ip(self.b), "addr", "add", f"{self.ip_b}/30", "dev", self.dev_b])
        run(["ip", "-n", self.a, "link", "set", self.dev_a, "up"])
        run([*self._ip(self.b), "link", "set", self.dev_b, "up"])

    @staticmethod
    def _ip(ns: str | None) -> list[str]:
        return ["ip"] if ns is None else ["ip", "-n", ns]

    def close(self) -> None:
        for name in reversed(self.created):
            if name.startswith("link:"):
                run(["ip", "link", "del", name[5:]], check=False)
            else:
                run(["ip", "netns", "del", name], check=False)
        self.created.clear()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- impairments ------------------------------------------------------------------------
    def drop_pct(self, ns: str | None, pct: float, src: str, *, udp_dport_min: int = 0) -> None:
        """Drop ``pct`` % (integer) of UDP packets from ``src`` arriving in ``ns``; count drops and passes."""
        match = ["ip", "saddr", src, "meta", "l4proto", "udp", "udp", "dport", ">=", str(udp_dport_min)]
        self._random_drop(ns, match, pct)

    def drop_rtp_pct(self, ns: str | None, pct: float, src: str, payload_type: int) -> None:
        """Like ``drop_pct``, but only RTP packets of ``payload_type`` (version 2 and PT read from the first
        two UDP payload bytes, which SRTP leaves in clear; RTCP's PT 200–206 never matches 0–127)."""
        match = ["ip", "saddr", src, "meta", "l4proto", "udp", "@th,64,2", "2", "@th,73,7", str(payload_type)]
        self._random_drop(ns, match, pct)

    def _random_drop(self, ns: str | None, match: list[str], pct: float) -> None:
        """A fresh table whose input chain drops ``pct`` % of packets matching ``match`` (nft numgen) and
        counts the ones it lets through, so drops / (drops + passes) is the kernel's loss rate."""
        nft = in_ns(ns, ["nft"])
        run([*nft, "delete", "table", "inet", NFT_TABLE], check=False)
        run([*nft, "add", "table", "inet", NFT_TABLE])
        chain = "{ type filter hook input priority 0; policy accept; }"
        run([*nft, "add", "chain", "inet", NFT_TABLE, "input", chain])
        drop = ["numgen", "random", "mod", "100", "<", str(int(pct)), "counter", "drop"]
        run([*nft, "add", "rule", "inet", NFT_TABLE, "input", *match, *drop])
        run([*nft, "add", "rule", "inet", NFT_TABLE, "input", *match, "counter", "accept"])

    def drop_counters(self, ns: str | None) -> tuple[int, int]:
        """(packets dropped, packets passed) by the ``drop_pct`` rules in ``ns``."""
        out = run(in_ns(ns, ["nft", "list", "table", "inet", NFT_TABLE]))
        counts = [int(m) for m in re.findall(r"counter packets (\d+)", out)]
        if len(counts) != 2:
            raise RuntimeError(f"unexpected nft output: {out}")
        return counts[0], counts[1]

    def rate_limit(
        self, ns: str | None, dev: str, rate: str, burst: str = "32kb", latency: str = "300ms"
    ) -> None:
        """TBF on ``dev``'s egress in ``ns``: at most ``rate`` (tc syntax, e.g. ``800kbit``)."""
        run(
            [
                *in_ns(ns, ["tc"]),
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                burst,
                "latency",
                latency,
            ]
        )
