//! The two settings of this kind of machine that set the open loop's
//! tail (issue 24, `BENCHMARKS.md` "Open loop: where the tail comes
//! from"), read so a run says which it had:
//!
//! - **Guest halt-polling** (`cpuidle` driver `haltpoll`): with
//!   `guest_halt_poll_ns` 0 an idle vCPU halts at once, and waking it is
//!   up to the host: 1.8–4 ms measured here, each time a server at half
//!   load goes idle and its next request arrives.
//! - **DAMON proactive reclaim** (a `kdamond` on the physical address
//!   space with a `pageout` scheme): every aggregation interval it scans
//!   memory on one core for 4–15 ms, whatever runs there.
//!
//! `scripts/quiet-machine.sh` runs a command with both set as most
//! machines have them (polling 200 µs, DAMON off) and puts them back.

use std::fs;

/// One line on both settings, as found.
pub fn settings() -> String {
    format!("{}; {}", halt_polling(), damon())
}

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn halt_polling() -> String {
    let driver = read("/sys/devices/system/cpu/cpuidle/current_driver");
    match (
        driver.as_deref(),
        read("/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
    ) {
        (Some("haltpoll"), Some(ns)) if ns == "0" => {
            "guest halt-polling off (an idle vCPU halts; the host wakes it)".into()
        }
        (Some("haltpoll"), Some(ns)) => format!("guest halt-polling up to {ns} ns"),
        (Some(d), _) => format!("cpuidle driver {d}"),
        (None, _) => "no cpuidle driver".into(),
    }
}

fn damon() -> String {
    let root = "/sys/kernel/mm/damon/admin/kdamonds";
    let n: usize = read(&format!("{root}/nr_kdamonds"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let on: Vec<String> = (0..n)
        .filter(|i| read(&format!("{root}/{i}/state")).as_deref() == Some("on"))
        .map(|i| {
            let ctx = format!("{root}/{i}/contexts/0");
            let ops = read(&format!("{ctx}/operations")).unwrap_or_default();
            let action = read(&format!("{ctx}/schemes/0/action")).unwrap_or_default();
            format!("kdamond {i} on ({ops} {action})")
        })
        .collect();
    if on.is_empty() {
        "DAMON off".into()
    } else {
        format!("DAMON {}", on.join(", "))
    }
}
