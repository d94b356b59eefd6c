"""Collector configuration: a TOML (or JSON) file parsed into frozen dataclasses.

Every key is optional, so ``streamqoe collector`` with no file runs locally (loopback, a DuckDB file in
the working directory, random development tokens printed once at start-up). docs/collector.md has the
reference; the example below is complete::

    listen_host = "127.0.0.1"
    listen_port = 8600
    db_path = "streamqoe.duckdb"
    max_body_bytes = 8_388_608          # request body as sent (compressed or not) → 413 above
    max_decompressed_bytes = 67_108_864 # gzip bodies after decompression → 413 above (gzip bombs)
    max_batch_items = 50_000            # items per request → 413 above
    checkpoint_wal_bytes = 16_777_216   # WAL size at which the maintenance thread checkpoints
    group_commit_max_rows = 50_000      # rows the writer merges into one transaction
    group_commit_linger_ms = 0          # a lone request waits this long for company before its commit
    ingest_workers = 0                  # processes parsing event batches (0 = in the collector process)
    store_threads = 1                   # DuckDB worker threads (ingest CPU vs parallel reads)
    store_process = false               # the store (DuckDB) in a process of its own (docs/collector.md)
    ack_on = "commit"                   # "journal": acknowledge events once journaled (docs/collector.md)
    heartbeat_timeout_s = 60            # a session with no leave ends this long after its last event

    [[tokens]]
    name = "probe-eu"                   # shown in logs instead of the secret
    role = "probe"                      # probe | platform | reader | analysis
    regions = ["eu-west"]               # probes only; ["*"] = any region
    secret_env = "STREAMQOE_TOKEN_PROBE_EU"   # or: secret = "…" (at least 16 characters)
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROLES = ("probe", "platform", "reader", "analysis")
MIN_SECRET_LEN = 16


@dataclass(frozen=True)
class Token:
    """One bearer token. ``secret`` is never logged; ``name`` identifies it in logs."""

    name: str
    role: str
    secret: str = field(repr=False)
    regions: tuple[str, ...] = ("*",)
    """Probe tokens: the report regions this token may write (``*`` = any, including none)."""

    def may_write_region(self, region: str | None) -> bool:
        """True if a probe report from ``region`` (None = no region) may be written with this token."""
        return "*" in self.regions or (region is not None and region in self.regions)


@dataclass(frozen=True)
class CollectorConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8600
    db_path: str = "streamqoe.duckdb"
    """DuckDB file; ``:memory:`` for tests that do not need durability."""
    max_body_bytes: int = 8 * 1024 * 1024
    max_decompressed_bytes: int = 64 * 1024 * 1024
    max_batch_items: int = 50_000
    checkpoint_wal_bytes: int = 16 * 1024 * 1024
    """WAL size (bytes) at which the maintenance thread checkpoints (off the ack path, collector.maintenance)."""
    group_commit_max_rows: int = 50_000
    group_commit_linger_ms: int = 0
    """A group of one request waits up to this long for a second before committing (0 = never): fewer,
    larger transactions (each has a fixed cost of ~5 ms of CPU) for up to this much more latency."""
    ingest_workers: int = 0
    """Worker processes that parse and validate event batches (``collector.parse_pool``); 0 = inline."""
    store_threads: int = 1
    """DuckDB's threads for the store (``SET threads``): 1 costs the least CPU per event ingested; more
    parallelise read queries and checkpoints, for CPU spent handing each insert's tasks between threads."""
    store_process: bool = False
    """Run the store in a child process (``collector.store_process``): DuckDB's calls then never wait for
    the event loop's GIL, for ~0.5 ms of hand-over per request and one more process."""
    ack_on: str = "commit"
    """When a batch of viewer events is acknowledged: ``commit`` (after DuckDB's commit) or ``journal``
    (after its append to a journal beside the database; DuckDB loads it behind, ``collector.journal``)."""
    heartbeat_timeout_s: float = 60.0
    tokens: tuple[Token, ...] = ()
    dev_tokens: bool = False
    """True when the tokens were generated at start-up because none were configured."""


_INT_KEYS = {
    "listen_port": (1, 65535),
    "max_body_bytes": (1024, 1 << 34),
    "max_decompressed_bytes": (1024, 1 << 36),
    "max_batch_items": (1, 10_000_000),
    "checkpoint_wal_bytes": (1 << 20, 1 << 36),
    "group_commit_max_rows": (1, 10_000_000),
    "group_commit_linger_ms": (0, 1000),
    "ingest_workers": (0, 64),
    "store_threads": (1, 256),
}


def parse_config(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> CollectorConfig:
    """Build a config from a parsed TOML/JSON mapping; ``ValueError`` names the offending key."""
    env = os.environ if env is None else env
    known = {f for f in CollectorConfig.__dataclass_fields__ if f != "dev_tokens"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown configuration key")
    kw: dict[str, Any] = {}
    for key, (lo, hi) in _INT_KEYS.items():
        if key in data:
            v = data[key]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"{key}: must be an integer in [{lo}, {hi}]")
            kw[key] = v
    for key in ("listen_host", "db_path"):
        if key in data:
            if not isinstance(data[key], str) or not data[key]:
                raise ValueError(f"{key}: must be a non-empty string")
            kw[key] = data[key]
    if "store_process" in data:
        if not isinstance(data["store_process"], bool):
            raise ValueError("store_process: must be true or false")
        kw["store_process"] = data["store_process"]
    if "ack_on" in data:
        if data["ack_on"] not in ("commit", "journal"):
            raise ValueError('ack_on: must be "commit" or "journal"')
        kw["ack_on"] = data["ack_on"]
    if "heartbeat_timeout_s" in data:
        v = data["heartbeat_timeout_s"]
        if isinstance(v, bool) or not isinstance(v, int | float) or not 1 <= v <= 86_400:
            raise ValueError("heartbeat_timeout_s: must be a number of seconds in [1, 86400]")
        kw["heartbeat_timeout_s"] = float(v)
    raw_tokens = data.get("tokens", [])
    if not isinstance(raw_tokens, list):
        raise ValueError("tokens: must be a list of tables")
    tokens = [_parse_token(t, i, env) for i, t in enumerate(raw_tokens)]
    names = [t.name for t in tokens]
    if len(set(names)) != len(names):
        raise ValueError("tokens: names must be unique")
    secrets_seen = [t.secret for t in tokens]
    if len(set(secrets_seen)) != len(secrets_seen):
        raise ValueError("tokens: two tokens share a secret")
    kw["tokens"] = tuple(tokens)
    if kw.get("ack_on") == "journal" and kw.get("db_path", CollectorConfig.db_path).startswith(":memory:"):
        raise ValueError('ack_on: "journal" needs a database file (db_path), not :memory:')
    return CollectorConfig(**kw)


def _parse_token(t: Any, i: int, env: Mapping[str, str]) -> Token:
    where = f"tokens[{i}]"
    if not isinstance(t, Mapping):
        raise ValueError(f"{where}: must be a table")
    unknown = sorted(set(t) - {"name", "role", "secret", "secret_env", "regions"})
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key")
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name: required string")
    role = t.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}.role: must be one of {', '.join(ROLES)}")
    if "secret" in t and "secret_env" in t:
        raise ValueError(f"{where}: give secret or secret_env, not both")
    if "secret_env" in t:
        var = t["secret_env"]
        if not isinstance(var, str) or var not in env:
            raise ValueError(f"{where}.secret_env: environment variable {var!r} is not set")
        secret: Any = env[var]
    else:
        secret = t.get("secret")
    if (
        not isinstance(secret, str)
        or len(secret) < MIN_SECRET_LEN
        or not secret.isprintable()
        or " " in secret
    ):
        raise ValueError(f"{where}.secret: must be at least {MIN_SECRET_LEN} printable characters, no spaces")
    regions = t.get("regions", ["*"])
    if not isinstance(regions, list) or not regions or not all(isinstance(r, str) and r for r in regions):
        raise ValueError(f'{where}.regions: must be a non-empty list of region names (or ["*"])')
    return Token(name=name, role=role, secret=secret, regions=tuple(regions))


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> CollectorConfig:
    """Read ``path`` (``.json`` → JSON, anything else → TOML); None → all defaults."""
    if path is None:
        return CollectorConfig()
    p = Path(path)
    raw = p.read_bytes()
    data = json.loads(raw) if p.suffix == ".json" else tomllib.loads(raw.decode())
    if not isinstance(data, dict):
        raise ValueError("configuration: must be a table/object")
    return parse_config(data, env)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def with_dev_tokens(config: CollectorConfig) -> CollectorConfig:
    """If no token is configured: random tokens, one per role, only for a loopback listener.

    A collector reachable from the network never runs without configured tokens (``ValueError``).
    """
    if config.tokens:
        return config
    if not is_loopback(config.listen_host):
        raise ValueError(
            f"tokens: none configured; refusing to listen on {config.listen_host} without tokens "
            "(development tokens are generated only for a loopback listener)"
        )
    tokens = tuple(Token(name=f"dev-{role}", role=role, secret=f"dev-{role}-{secrets.token_urlsafe(18)}")
                   for role in ROLES)  # fmt: skip
    return replace(config, tokens=tokens, dev_tokens=True)
