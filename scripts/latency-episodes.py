#!/usr/bin/env python3
"""Groups an open loop's slow requests into episodes, and says which began
with a machine event (issue 24, BENCHMARKS.md "Open loop: where the tail
comes from").

    scripts/latency-episodes.py LATENCY_LOG [TIMEHIST]

LATENCY_LOG is `quotad-bench --rate R --latency-log FILE`'s output (one
line per request: due_us lag_us took_us). A request of 1 ms or more is
slow; slow requests less than 2 ms apart form an episode. With TIMEHIST
(`perf sched timehist` of a `perf sched record -a` taken alongside), the
machine events are DAMON's kdamond running over 0.5 ms and a runtime
thread woken more than 0.4 ms late (and what ran before it); the two
clocks are aligned at the offset that puts the most episodes next to an
event, and each episode lists the events in it.
"""
import collections
import sys

SLOW_US, GAP_US, WINDOW_S = 1000, 2000, 0.004


def episodes(path):
    rows = [tuple(map(int, line.split())) for line in open(path)]
    out = []
    for due, lag, took in rows:
        if took < SLOW_US:
            continue
        if out and due - out[-1]["end"] < GAP_US:
            e = out[-1]
            e["end"], e["slow"] = due, e["slow"] + 1
            e["worst"], e["lag"] = max(e["worst"], took), max(e["lag"], lag)
        else:
            out.append({"start": due, "end": due, "slow": 1, "worst": took, "lag": lag})
    return rows, out


def machine_events(path):
    events, before = [], {}
    for line in open(path).readlines()[3:]:
        p = line.split()
        try:
            t, cpu = float(p[0]), int(p[1].strip("[]"))
            delay, run = float(p[-2]), float(p[-1])
        except (ValueError, IndexError):
            continue
        name = " ".join(p[2:-3])
        if "kdamond" in name and run > 0.5:
            events.append((t - run / 1e3, f"kdamond on cpu{cpu} {run:.2f} ms"))
        elif "tokio-rt" in name and delay > 0.4:
            prev = before.get(cpu, "?")
            prev = "idle" if prev.startswith("<idle>") else prev.split("[")[0]
            events.append((t - (run + delay) / 1e3, f"woken {delay:.2f} ms late on cpu{cpu} (after {prev})"))
        before[cpu] = name
    return events


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    rows, eps = episodes(sys.argv[1])
    slow = sum(e["slow"] for e in eps)
    print(f"{len(rows)} requests, {slow} slow (≥ {SLOW_US} µs), in {len(eps)} episodes")
    events = machine_events(sys.argv[2]) if len(sys.argv) == 3 else []
    offset = 0.0
    if events and eps:
        candidates = collections.Counter(round(t - e["start"] / 1e6, 3) for t, _ in events for e in eps)

        def score(off):
            return sum(any(abs(t - off - e["start"] / 1e6) < WINDOW_S for t, _ in events) for e in eps)

        offset = max((off for off, _ in candidates.most_common(200)), key=score)
        print(f"{len(events)} machine events; aligned, {score(offset)} episodes begin next to one")
    explained = 0
    for e in sorted(eps, key=lambda e: -e["slow"]):
        lo, hi = e["start"] / 1e6 - WINDOW_S, e["end"] / 1e6 + WINDOW_S / 2
        near = [k for t, k in events if lo < t - offset < hi]
        explained += e["slow"] if near else 0
        if e["slow"] >= 100:
            print(f"  at {e['start'] / 1000:8.1f} ms, {(e['end'] - e['start']) / 1000:5.1f} ms long: "
                  f"{e['slow']:5d} slow, worst {e['worst']} µs, generator lag up to {e['lag']} µs"
                  + ("; " + "; ".join(near[:3]) if near else ""))
    if events:
        print(f"slow requests in episodes that began with a machine event: {explained} of {slow}")


if __name__ == "__main__":
    main()
