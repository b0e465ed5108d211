"""PNG plots of a run: latency CDFs, a timeline of request rate against TTFT/TPOT, and replicas per pool."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from loadtest.records import RequestRecord  # noqa: E402
from loadtest.replicas import read_samples  # noqa: E402
from loadtest.report import SLO, rate_series  # noqa: E402


def _ecdf(ax, values: Sequence[float], title: str, slo_s: float | None = None) -> None:
    if values:
        ordered = sorted(v * 1000 for v in values)
        ax.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post")
    if slo_s is not None:
        ax.axvline(slo_s * 1000, color="red", linestyle="--", label=f"SLO {slo_s * 1000:g} ms")
        ax.legend(loc="lower right")
    ax.set_title(f"{title} (n={len(values)})")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of requests" if title != "ITL" else "fraction of gaps")
    ax.grid(alpha=0.3)


def plot_cdfs(path: Path, records: Sequence[RequestRecord], slo: SLO) -> None:
    ok = [r for r in records if r.ok]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    _ecdf(axes[0][0], [r.ttft_s for r in ok if r.ttft_s is not None], "TTFT", slo.ttft_s)
    _ecdf(axes[0][1], [r.tpot_s for r in ok if r.tpot_s is not None], "TPOT", slo.tpot_s)
    _ecdf(axes[1][0], [g for r in ok for g in r.itl_s], "ITL")
    _ecdf(axes[1][1], [r.e2e_s for r in ok if r.e2e_s is not None], "e2e")
    fig.suptitle("Latency CDFs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bin_width(end_s: float) -> float:
    return max(1.0, round(end_s / 60))


def plot_timeline(path: Path, records: Sequence[RequestRecord], slo: SLO) -> None:
    end = max((r.end_offset_s for r in records), default=1.0)
    width = _bin_width(end)
    fig, (rate_ax, ttft_ax, tpot_ax) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    for label, offsets in (("sent", [r.offset_s for r in records]),
                           ("finished ok", [r.end_offset_s for r in records if r.ok])):
        xs, ys = rate_series(offsets, width, end)
        rate_ax.step(xs, ys, where="post", label=label)
    failed = [r.end_offset_s for r in records if not r.ok]
    if failed:
        xs, ys = rate_series(failed, width, end)
        rate_ax.step(xs, ys, where="post", label="failed", color="red")
    users = [(r.offset_s, r.users) for r in records if r.users is not None]
    if users:
        users_ax = rate_ax.twinx()
        users_ax.plot(*zip(*users), ".", color="gray", markersize=3, label="users")
        users_ax.set_ylabel("users (at send)")
        users_ax.set_ylim(0, max(u for _, u in users) * 1.1 + 0.5)
    rate_ax.set_ylabel(f"requests/s ({width:g} s bins)")
    rate_ax.legend(loc="upper left")
    rate_ax.set_title("Request rate vs latency")
    for ax, attr, name, bound in ((ttft_ax, "ttft_s", "TTFT", slo.ttft_s), (tpot_ax, "tpot_s", "TPOT", slo.tpot_s)):
        points = [(r.offset_s, getattr(r, attr) * 1000) for r in records if r.ok and getattr(r, attr) is not None]
        if points:
            ax.plot(*zip(*points), ".", markersize=4)
        ax.axhline(bound * 1000, color="red", linestyle="--", label=f"SLO {bound * 1000:g} ms")
        ax.set_ylabel(f"{name} (ms)")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    tpot_ax.set_xlabel("seconds since start (by send time)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_replicas(path: Path, samples: Sequence[dict], records: Sequence[RequestRecord]) -> bool:
    """Healthy (and target) replicas per pool over time; False when there is nothing to plot."""
    pools = sorted({pool for s in samples for pool in s.get("pools", {}) if pool != "router"})
    if not pools:
        return False
    fig, ax = plt.subplots(figsize=(11, 5))
    for pool in pools:
        for kind, style in (("healthy", "-"), ("target", ":")):
            points = [(s["offset_s"], s["pools"][pool][kind]) for s in samples if kind in s["pools"].get(pool, {})]
            if points:
                ax.step(*zip(*points), style, where="post", label=f"{pool} {kind}")
    top = max((v for s in samples for counts in s["pools"].values() for v in counts.values()), default=1)
    ax.set_ylim(0, top + 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("replicas")
    ax.set_xlabel("seconds since start")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    if records:
        end = max(r.end_offset_s for r in records)
        rate_ax = ax.twinx()
        xs, ys = rate_series([r.offset_s for r in records], _bin_width(end), end)
        rate_ax.step(xs, ys, where="post", color="gray", alpha=0.5)
        rate_ax.set_ylabel("requests sent/s (gray)")
    ax.set_title("Replicas per pool")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_plots(out_dir: Path, records: Sequence[RequestRecord], slo: SLO,
                replicas_path: Path | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "latency_cdfs.png", out_dir / "timeline.png"]
    plot_cdfs(written[0], records, slo)
    plot_timeline(written[1], records, slo)
    samples = read_samples(replicas_path) if replicas_path else []
    if samples and plot_replicas(out_dir / "replicas.png", samples, records):
        written.append(out_dir / "replicas.png")
    return written
