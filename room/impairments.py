"""Pure impairment models applied per RTP packet: random loss, burst loss, bandwidth cap, delay/jitter.

No I/O and no clocks: randomness comes from an injected ``random.Random`` and time from ``now_ms``
arguments, so tests with a seeded RNG are exact. ``room/sendpath.py`` wires them to real packets.
"""

from __future__ import annotations

import random

from room.schedule import BurstLoss


class RandomLoss:
    """Independent (Bernoulli) loss: each packet is lost with probability ``pct`` / 100."""

    def __init__(self, pct: float, rng: random.Random) -> None:
        self.probability = pct / 100.0
        self._rng = rng

    def lost(self) -> bool:
        """Draw for one packet: True if it is lost."""
        return self.probability > 0 and self._rng.random() < self.probability


class GilbertElliott:
    """Two-state Markov loss (Gilbert-Elliott). Starts in the good state.

    Per packet: first the state moves (good→bad with ``p``, bad→good with ``r``), then the packet is
    lost with ``bad_loss`` in the bad state or ``good_loss`` in the good state.
    """

    def __init__(self, params: BurstLoss, rng: random.Random) -> None:
        self.params = params
        self.bad = False
        self._rng = rng

    def lost(self) -> bool:
        """Draw for one packet: True if it is lost."""
        rng, p = self._rng, self.params
        if self.bad:
            if rng.random() < p.r:
                self.bad = False
        elif rng.random() < p.p:
            self.bad = True
        loss = p.bad_loss if self.bad else p.good_loss
        return loss > 0 and (loss >= 1 or rng.random() < loss)


class TokenBucket:
    """A token-bucket shaper with a bounded FIFO queue, as departure times (GCRA, virtual scheduling).

    ``rate_kbps`` kbit/s with a bucket of ``burst_bytes``: a packet leaves as soon as the bucket holds
    its size; packets that would wait in the queue more than ``queue_ms`` are dropped (tail drop) and
    take no tokens. No real queue is kept: ``admit`` returns when the packet leaves.
    """

    def __init__(self, rate_kbps: float, burst_bytes: int, queue_ms: float) -> None:
        self.rate_kbps = rate_kbps
        self.burst_bytes = burst_bytes
        self.queue_ms = queue_ms
        self._tat_ms = float("-inf")

    def admit(self, now_ms: float, size_bytes: int) -> float | None:
        """When a packet of ``size_bytes`` arriving at ``now_ms`` leaves, ms (≥ now_ms); None if dropped."""
        # the bucket holds size_bytes once it is no fuller than (burst - size): GCRA with that tolerance
        tolerance_ms = max(0, self.burst_bytes - size_bytes) * 8 / self.rate_kbps
        depart = max(now_ms, self._tat_ms - tolerance_ms)
        if depart - now_ms > self.queue_ms:
            return None
        self._tat_ms = max(depart, self._tat_ms) + size_bytes * 8 / self.rate_kbps
        return depart


class DelayJitter:
    """Added delay plus uniform jitter, keeping packet order (a packet never overtakes an earlier one)."""

    def __init__(self, delay_ms: float, jitter_ms: float, rng: random.Random) -> None:
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms
        self._rng = rng
        self._last_ms = float("-inf")

    def release_ms(self, t_ms: float) -> float:
        """When a packet ready at ``t_ms`` goes out: t + delay + U(0, jitter), not before the previous one."""
        out = t_ms + self.delay_ms
        if self.jitter_ms > 0:
            out += self._rng.uniform(0.0, self.jitter_ms)
        out = max(out, self._last_ms)
        self._last_ms = out
        return out
