"""A short human summary of a report, for a terminal."""

from __future__ import annotations

from probe.report import Report


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def summary_text(r: Report) -> str:
    """A few lines: outcome, join phases, what the viewer saw, the network."""
    s = r.summary
    lines = [f"streamqoe probe {r.target.url} ({r.target.signaling}, {s.mode}, {r.duration_s:.1f} s)"]
    if r.failure:
        lines.append(f"  FAILED  {r.failure}: {r.failure_message}")
    j = s.join
    lines.append(f"  join    signaling {_ms(j.signaling_ms)}  ice {_ms(j.ice_connected_ms)}  dtls "
                 f"{_ms(j.dtls_connected_ms)}  first rtp {_ms(j.first_rtp_ms)}  TTFF {_ms(j.ttff_ms)}")
    v = s.video
    if v is not None:
        res = f"{v.width}x{v.height}" if v.width else "-"
        hd = "-" if v.hd_share is None else f"{100 * v.hd_share:.0f}%"
        sr = "-" if v.stall_ratio is None else f"{100 * v.stall_ratio:.2f}%"
        fps = "-" if v.fps_mean is None else f"{v.fps_mean:.1f}"
        lines.append(f"  video   {res} {fps} fps  HD {hd}  freezes {v.freezeCount} "
                     f"({v.totalFreezesDuration:.2f} s)  pauses {v.pauseCount}  stall ratio {sr}")
        if v.latency_p50_ms is not None:
            lines.append(f"  marker  latency p50 {_ms(v.latency_p50_ms)} p95 {_ms(v.latency_p95_ms)} "
                         f"({v.latency_clock})  repeated {v.marker_repeated_frames}  skipped {v.marker_skipped_frames}")
    if s.rtt_ms is not None:
        lines.append(f"  rtt     {s.rtt_ms:.1f} ms (ICE consent checks)")
    for st in s.streams:
        loss = "-" if st.loss_pct is None else f"{st.loss_pct:.2f}%"
        res = "-" if st.residual_loss_pct is None else f"{st.residual_loss_pct:.2f}%"
        jit = "-" if st.jitter_ms is None else f"{st.jitter_ms:.1f} ms"
        rate = "-" if st.bitrate_kbps is None else f"{st.bitrate_kbps:.0f} kbps"
        lines.append(f"  {st.kind:<7} ssrc {st.ssrc}: {st.packetsReceived} pkts, loss {loss} "
                     f"(residual {res}), jitter {jit}, {rate}, NACK {st.nackCount}, PLI {st.pliCount}")
    if s.audio is not None:
        a = s.audio
        lines.append(f"  audio   {a.framesReceived} frames, gaps {a.gapCount} ({a.total_gap_ms:.0f} ms)")
    h = s.host_stalls
    if h is not None and h.count:
        dec = f", {h.decoder_count} of its decoder thread" if h.decoder_count else ""
        lines.append(f"  WARNING this probe's own process could not run {h.stalled_s:.2f} s ({h.count} stalls{dec}, "
                     f"longest {_ms(h.max_ms)}); {h.freezes_during} of the freezes fell inside: they may be the "
                     "probe's, not the stream's")
    return "\n".join(lines)
