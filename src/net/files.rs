//! The process's open-files limit (`RLIMIT_NOFILE`): every connection is
//! a file, so the connection caps need the limit to be at least their
//! sum. At start the soft limit is raised to the hard one, as most
//! servers do (the soft limit of 1 024 many shells set is far below
//! what `server.max_connections` allows); [`Needs`] says what the caps
//! add up to, for a warning when the limit is still short.

/// The soft and hard limits on open files; `None` when unknown.
pub fn open_files_limit() -> Option<(u64, u64)> {
    rlimit::Resource::NOFILE.get().ok()
}

/// Raises the soft limit on open files to the hard one (to at most
/// `fs.nr_open`'s usual 1 048 576 when the hard limit is unlimited).
/// Returns the soft limit before and after; an error leaves it as it
/// was.
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft >= hard {
        return Ok((soft, soft));
    }
    if rlimit::Resource::NOFILE.set(hard, hard).is_err() {
        // An unlimited hard limit is more than the kernel allows one
        // process (`fs.nr_open`).
        rlimit::Resource::NOFILE.set(hard.min(NR_OPEN), hard)?;
    }
    let (after, _) = rlimit::Resource::NOFILE.get()?;
    Ok((soft, after))
}

/// `fs.nr_open`'s default: the most files Linux lets one process open.
const NR_OPEN: u64 = 1 << 20;

/// What the connection caps add up to, in open files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// `server.max_connections` of the gRPC check listener.
    pub grpc: u64,
    /// `admin.max_connections` (0 without an admin listener).
    pub admin: u64,
    /// The HTTP listener's cap (health, `/metrics`).
    pub http: u64,
    /// The HTTP check door's cap (0 without it).
    pub http_check: u64,
}

impl Needs {
    /// Listeners, Redis connections, config and log files, the runtime.
    pub const REST: u64 = 64;

    /// Their sum, with [`Self::REST`].
    pub fn total(&self) -> u64 {
        self.grpc + self.admin + self.http + self.http_check + Self::REST
    }

    /// How the total is made, for a log line (each cap, then the sum).
    pub fn sum(&self) -> String {
        format!(
            "{} (gRPC) + {} (admin) + {} (HTTP) + {} (HTTP check) + {} (listeners, Redis, files) = {}",
            self.grpc,
            self.admin,
            self.http,
            self.http_check,
            Self::REST,
            self.total()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_needs_add_up_as_the_log_says() {
        let needs = Needs {
            grpc: 1_000,
            admin: 16,
            http: 256,
            http_check: 0,
        };
        assert_eq!(needs.total(), 1_336);
        assert_eq!(
            needs.sum(),
            "1000 (gRPC) + 16 (admin) + 256 (HTTP) + 0 (HTTP check) + 64 (listeners, Redis, files) = 1336"
        );
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let (_, hard) = open_files_limit().expect("a limit on Linux");
        let (before, after) = raise_open_files_limit().expect("raising to the hard limit");
        assert!(after >= before);
        assert_eq!(after, hard.min(NR_OPEN).max(before));
        assert_eq!(open_files_limit().map(|(soft, _)| soft), Some(after));
    }
}
