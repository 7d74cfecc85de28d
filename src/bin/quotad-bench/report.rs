//! The report: a few lines for people, or one JSON object (`--json`).

use crate::Args;
use crate::drive::Outcome;

/// Prints what `result` says about the run `args` describes.
pub fn print(args: &Args, result: &Outcome) {
    let secs = result.elapsed.as_secs_f64().max(f64::EPSILON);
    let h = &result.latency;
    let pct = |q: f64| h.value_at_quantile(q);
    let mode = format!("{:?}", args.mode).to_lowercase();
    if args.json {
        let report = serde_json::json!({
            "mode": mode,
            "addr": args.addr.to_string(),
            "keys": args.keys,
            "concurrency": args.concurrency,
            "connections": args.connections,
            "rate": args.rate,
            "seconds": secs,
            "requests": result.requests,
            "checks": result.checks,
            "allowed": result.allowed,
            "denied": result.denied,
            "errors": result.errors,
            "requests_per_second": result.requests as f64 / secs,
            "checks_per_second": result.checks as f64 / secs,
            "latency_us": {
                "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
                "p999": pct(0.999), "max": h.max(), "mean": h.mean(),
            },
        });
        println!("{report}");
        return;
    }
    let open = args.rate.map_or_else(
        || "closed loop".to_owned(),
        |r| format!("open loop at {r}/s"),
    );
    println!(
        "{mode} against {} for {secs:.1} s ({open}, {} callers, {} connections, {} keys)",
        args.addr, args.concurrency, args.connections, args.keys
    );
    println!(
        "requests/s {:.0}  checks/s {:.0}  allowed {}  denied {}  errors {}",
        result.requests as f64 / secs,
        result.checks as f64 / secs,
        result.allowed,
        result.denied,
        result.errors
    );
    println!(
        "latency µs  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        h.max()
    );
}
