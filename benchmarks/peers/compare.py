"""bg-coor beside its peers, from one results file of the peer harness (``--out X`` writes
``X.json``): ratios to the reference peer of each server, and the issue's targets.

    python benchmarks/peers/compare.py /tmp/bench-full/peers.json

Prints Markdown; everything comes from that one file, so every figure is from one run.
Rows: ``bgcoor`` (Redis) against dramatiq, ``bgcoor_pg`` (PostgreSQL) against
procrastinate, each cell the median of the run's repeats.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: (our adapter, its server, the reference peer on that server)
PAIRS = [("bgcoor", "Redis", "dramatiq"), ("bgcoor_pg", "PostgreSQL", "procrastinate")]


def median(results: dict[str, Any], lib: str, workload: str, metric: str) -> float | None:
    cell = results.get(lib, {}).get(workload, {}).get(metric)
    return None if not isinstance(cell, dict) else float(cell["median"])


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ratio(ours: float | None, theirs: float | None, *, lower_is_better: bool = False) -> str:
    if not ours or not theirs:
        return "n/a"
    return f"{(theirs / ours if lower_is_better else ours / theirs):.1f}x"


def best_peer(results: dict[str, Any], workload: str, metric: str, *, low: bool) -> str:
    """The best peer (not bg-coor) on ``metric``, as "name figure"."""
    peers = [
        (value, lib)
        for lib in results
        if not lib.startswith("bgcoor")
        and (value := median(results, lib, workload, metric)) is not None
    ]
    if not peers:
        return "n/a"
    value, lib = min(peers) if low else max(peers)
    return f"{lib} {value:,.2f}" if value < 100 else f"{lib} {value:,.0f}"


def comparison(results: dict[str, Any]) -> list[str]:
    out = [
        "| | bg-coor | reference peer | ratio | best peer |",
        "| --- | --- | --- | --- | --- |",
    ]
    for ours, server, peer in PAIRS:
        if ours not in results:
            continue
        rows = [
            ("W1 processed/s", "w1", "processed_per_s", 0, False),
            ("W1 enqueue/s", "w1", "enqueue_per_s", 0, False),
            ("W2 p50 ms", "w2", "p50_ms", 2, True),
            ("W2 p99 ms", "w2", "p99_ms", 2, True),
            ("W3 wall s (ideal 0.50)", "w3", "process_wall_s", 2, True),
            ("W1 worker CPU s (20,000 tasks)", "w1", "worker_cpu_s", 2, True),
            ("W1 peak RSS MB", "w1", "peak_rss_mb", 0, True),
        ]
        for label, workload, metric, digits, low in rows:
            a, b = median(results, ours, workload, metric), median(results, peer, workload, metric)
            best = best_peer(results, workload, metric, low=low)
            out.append(
                f"| **{server}** {label} | {fmt(a, digits)} | {peer} {fmt(b, digits)} | "
                f"{ratio(a, b, lower_is_better=low)} | {best} |"
            )
    return out


def targets(results: dict[str, Any]) -> list[str]:
    """The Redis targets of issue 4, checked against this run's medians."""
    w1 = median(results, "bgcoor", "w1", "processed_per_s")
    dramatiq = median(results, "dramatiq", "w1", "processed_per_s")
    p50, p99 = median(results, "bgcoor", "w2", "p50_ms"), median(results, "bgcoor", "w2", "p99_ms")
    w3 = median(results, "bgcoor", "w3", "process_wall_s")
    rss = max((median(results, "bgcoor", w, "peak_rss_mb") or 0.0) for w in ("w1", "w2", "w3"))

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**not met**")

    times = None if not w1 or not dramatiq else w1 / dramatiq
    checks = [
        (
            "W1 processed/s ≥ 3x dramatiq's",
            f"{times:.1f}x" if times else "n/a",
            times and times >= 3,
        ),
        ("W2 p50 < 1 ms", fmt(p50, 2), None if p50 is None else p50 < 1),
        ("W2 p99 < 3 ms", fmt(p99, 2), None if p99 is None else p99 < 3),
        ("W3 < 1 s", fmt(w3, 2), None if w3 is None else w3 < 1),
        ("worker RSS < 60 MB (peak over W1-W3)", fmt(rss, 0), rss < 60 if rss else None),
    ]
    return [
        "| target (bg-coor on Redis, one worker process) | this run | |",
        "| --- | --- | --- |",
        *(f"| {what} | {value} | {verdict(ok)} |" for what, value, ok in checks),
    ]


def physical(doc: dict[str, Any]) -> list[str]:
    phys = doc.get("physical") or {}
    if not phys or "error" in phys:
        return ["(no physical limits in this run)"]
    return ["```json", json.dumps(phys, indent=1), "```"]


def main(path: str) -> None:
    doc = json.loads(Path(path).read_text())
    results = doc["results"]
    env = doc["environment"]
    host = f"{env['cpu_model']} ({env['host_cpus']} vCPU)"
    print(f"Run of {env['date']}, {doc['repeats']} repeats, {host}")
    print()
    print("\n".join(comparison(results)))
    print()
    print("\n".join(targets(results)))
    print()
    print("\n".join(physical(doc)))


if __name__ == "__main__":
    main(sys.argv[1])
