#!/usr/bin/env python3
"""Side-by-side runs of servers under the same load, in alternating rounds
(issue 24's method: one lever at a time, measured against the last build).

    scripts/ab-servers.py MODE KEYS ROUNDS SECS VARIANT...

VARIANT is NAME=floor (the e2e bench's constant-OK tonic server), or
NAME=quotad or NAME=bin:/path/to/quotad, optionally followed by
:VAR=VALUE,... to set environment variables; CFG=FILE there picks the
config (default: scripts/perf-quotad.yaml, on ports 39081 and 39082).
The first variant is the baseline.

Each server runs on CPU 1 with one runtime thread; `quotad-bench --mode
MODE --keys KEYS` on CPU 0 keeps 32 calls in flight on 2 connections for
SECS seconds after 1 s of warm-up. Prints each run's calls/s, server CPU
per call (from /proc/PID/stat over warm-up and run), the generator's CPU
per call (its rusage), p50/p99/p99.9, and the medians. BENCH_ARGS adds
quotad-bench flags; GEN names another quotad-bench binary; B names the
build directory (default target/release, after `cargo build --release`
and `cargo bench --bench e2e --no-run` for the floor).
"""
import glob, json, os, resource, statistics, subprocess, sys, tempfile, time, urllib.request

B = os.environ.get("B", "target/release")
CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "perf-quotad.yaml")


def floor_bin():
    c = [x for x in glob.glob(B + "/deps/e2e-*") if os.access(x, os.X_OK) and not x.endswith(".d")]
    if not c:
        sys.exit("no floor: run `cargo bench --bench e2e --no-run` first")
    return max(c, key=os.path.getmtime)


def start(variant, default_cfg):
    name, spec = variant.split("=", 1)
    parts = spec.split(":")
    env = dict(os.environ, TOKIO_WORKER_THREADS="1")
    extra = parts[-1] if len(parts) > 1 and "=" in parts[-1] else ""
    for e in filter(None, extra.split(",")):
        k, v = e.split("=", 1)
        env[k] = v
    if parts[0] == "floor":
        p = subprocess.Popen(["taskset", "-c", "1", floor_bin(), "--serve-floor"], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return name, p, int(p.stdout.readline().split()[1])
    binary = parts[1] if parts[0] == "bin" else B + "/quotad"
    cfg = env.pop("CFG", default_cfg)
    p = subprocess.Popen(["taskset", "-c", "1", binary, "serve", "--config", cfg, "--log", "warn"],
                         env=env, stdin=subprocess.PIPE)
    for _ in range(100):
        try:
            urllib.request.urlopen("http://127.0.0.1:39082/readyz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    return name, p, 39081


def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def main():
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    mode, keys, rounds, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    variants = sys.argv[5:]
    extra = os.environ.get("BENCH_ARGS", "").split()
    hz = os.sysconf("SC_CLK_TCK")
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    cfg.write(open(CONFIG).read().replace("GRPC_PORT", "39081").replace("HTTP_PORT", "39082"))
    cfg.close()
    results = {}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            name, p, port = start(v, cfg.name)
            c0 = cpu_ticks(p.pid)
            g0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run(
                ["taskset", "-c", "0", os.environ.get("GEN", B + "/quotad-bench"), "--addr", f"127.0.0.1:{port}",
                 "--mode", mode, "--domain", "quotad", "--keys", keys, "--threads", "1",
                 "--connections", "2", "--concurrency", "32", "--duration", f"{secs}s",
                 "--warmup", "1s", "--json"] + extra,
                capture_output=True, text=True, check=True)
            c1 = cpu_ticks(p.pid)
            g1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            p.terminate()
            p.wait()
            j = json.loads(out.stdout)
            rps, lat = j["requests_per_second"], j["latency_us"]
            cpu = (c1 - c0) / hz / (rps * (secs + 1)) * 1e6
            gen = ((g1.ru_utime + g1.ru_stime) - (g0.ru_utime + g0.ru_stime)) / (rps * (secs + 1)) * 1e6
            results.setdefault(name, []).append((rps, cpu, lat["p99"], gen))
            print(f"{name:10s} round {r + 1}: {rps:9.0f}/s  CPU per call {cpu:6.2f} µs  "
                  f"generator {gen:6.2f} µs  "
                  f"p50 {lat['p50']} p99 {lat['p99']} p99.9 {lat['p999']} µs", flush=True)
    os.unlink(cfg.name)
    for name, xs in results.items():
        print(f"{name:10s} median {statistics.median(x[0] for x in xs):9.0f}/s  "
              f"CPU per call {statistics.median(x[1] for x in xs):6.2f} µs  "
              f"generator {statistics.median(x[3] for x in xs):6.2f} µs  "
              f"p99 {statistics.median(x[2] for x in xs)} µs")


if __name__ == "__main__":
    main()
