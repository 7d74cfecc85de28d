//! Reloading the config while serving: on SIGHUP, on the admin API's
//! `Reload`, and when the files change.
//!
//! A [`Reloader`] reads the files again through its [`Loader`] (the
//! binary's replays its command-line flags over the file), hands the
//! result to [`Control::reload`] (which validates it and swaps it in, or
//! leaves everything as it was), then runs its hooks (TLS acceptors take
//! the new certificates). One reload runs at a time. Every outcome is
//! logged: what changed, or why the files were refused.
//!
//! Watching is polling: every `reload.poll_interval` the watched files
//! (the config, limits files and directories, TLS files) are read and
//! hashed ([`fingerprint`]); a new fingerprint that stays put for
//! `reload.debounce` triggers a reload. Polling contents rather than
//! waiting for inotify events sees every way a file can change,
//! including Kubernetes' ConfigMap updates (a symlink swapped over a
//! directory) and editors that write a new file and rename it. Files
//! that were refused once are not tried again until they change again.
//! Files put back as they are in effect after a refused reload are
//! reloaded too: that reload finds nothing changed, which is a success,
//! and clears the failure (`quotad_config_last_reload_successful` back to
//! 1, the admin API's `last_error` empty).
//!
//! Every file is read through the config reader's checks
//! ([`crate::diag::files`]): only regular files, opened without
//! waiting on a FIFO. A file larger than [`MAX_FILE_BYTES`] is refused
//! without being read (a config is kilobytes; a huge one is a mistake,
//! and reading and parsing it would cost memory and seconds on every
//! attempt), and the watcher fingerprints it by size and modification
//! time instead of hashing it every poll; what is no regular file it
//! fingerprints by its type, unread.
//!
//! Reads run on a blocking thread with a deadline ([`READ_DEADLINE`]): a
//! reload whose files cannot be read in time (a hung network mount) is
//! refused with an error saying so, the watcher skips that poll, and no
//! read starts again until the late one returns. Neither the watcher nor
//! a SIGHUP's reload holds up the shutdown.

use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Control, Reloaded};
use crate::config::Config;
use crate::diag::files::{NotRegularFile, limits_entries, open_regular};
use crate::shutdown::Shutdown;

/// The largest config or limits file a reload reads (as at start).
pub use crate::diag::files::MAX_FILE_BYTES;

/// How long a reload, or one poll of the watcher, may take to read the
/// files before it gives up with an error.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);

/// Reads the config again, as it was read at start; an error is one line
/// naming the file, line and field.
pub type Loader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Something to run after a reload took effect, with the new config.
pub type Hook = Box<dyn Fn(&Config) + Send + Sync>;

/// Something to run after a reload was refused: what started it, and why
/// it was refused (the message the log and the caller get).
pub type FailureHook = Box<dyn Fn(Cause, &str) + Send + Sync>;

/// What started a reload (for the logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// SIGHUP.
    Signal,
    /// The admin API's `Reload`.
    Admin,
    /// The watched files changed.
    FileChange,
}

impl Cause {
    /// How logs and the audit trail name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Signal => "SIGHUP",
            Cause::Admin => "admin Reload",
            Cause::FileChange => "file change",
        }
    }
}

/// Runs reloads; see the module docs.
pub struct Reloader {
    control: Arc<Control>,
    loader: Loader,
    hooks: Vec<Hook>,
    failure_hooks: Vec<FailureHook>,
    one_at_a_time: tokio::sync::Mutex<()>,
    reads: Reads,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// Reloads `control` through `loader`.
    pub fn new(control: Arc<Control>, loader: Loader) -> Self {
        Self {
            control,
            loader,
            hooks: Vec::new(),
            failure_hooks: Vec::new(),
            one_at_a_time: tokio::sync::Mutex::new(()),
            reads: Reads {
                deadline: READ_DEADLINE,
                stuck: Arc::new(AtomicUsize::new(0)),
            },
        }
    }

    /// Gives reads `deadline` instead of [`READ_DEADLINE`].
    pub fn with_read_deadline(mut self, deadline: Duration) -> Self {
        self.reads.deadline = deadline;
        self
    }

    /// Runs `hook` after each reload that took effect.
    pub fn on_reload(&mut self, hook: Hook) {
        self.hooks.push(hook);
    }

    /// Runs `hook` after each reload that was refused.
    pub fn on_failure(&mut self, hook: FailureHook) {
        self.failure_hooks.push(hook);
    }

    /// Reads the files and puts them in effect, or refuses them (the
    /// running config stays); the error is one line naming the file and
    /// field. Files that cannot be read within the read deadline
    /// ([`READ_DEADLINE`]) are refused too, see the module docs. Files
    /// equal to the running config's are a success: a failure before is
    /// cleared.
    pub async fn reload(&self, cause: Cause) -> Result<Reloaded, String> {
        let _one = self.one_at_a_time.lock().await;
        let was_failing = self.control.stats().last_failed;
        let before = self.control.config().watched_files();
        let seed = self.control.config().digest_seed();
        let loader = Arc::clone(&self.loader);
        // Reading files is blocking I/O: off the request threads.
        let loaded = self
            .reads
            .run(move || {
                // Fingerprinted before reading: should a file change while
                // it is read, the next poll sees a difference and reloads
                // again.
                let digest = fingerprint(seed, &before);
                loader().map(|config| {
                    let after = config.watched_files();
                    let digest = if after == before && config.digest_seed() == seed {
                        digest
                    } else {
                        fingerprint(config.digest_seed(), &after)
                    };
                    (config, digest)
                })
            })
            .await;
        let mut skipped = Vec::new();
        let outcome = match loaded {
            // Control counts what it refuses; files that did not even
            // load are counted here.
            Ok(Ok((config, digest))) => {
                skipped.clone_from(&config.live.skipped);
                self.control
                    .reload(config, digest)
                    .map_err(|e| e.to_string())
            }
            Ok(Err(e)) | Err(e) => Err(self.refused(e)),
        };
        self.report(cause, &outcome, was_failing);
        if outcome.is_ok() {
            for s in &skipped {
                tracing::warn!(
                    cause = cause.as_str(),
                    "limits directory entry skipped: {s}"
                );
            }
        }
        outcome
    }

    /// Logs `outcome` and runs the hooks.
    fn report(&self, cause: Cause, outcome: &Result<Reloaded, String>, was_failing: bool) {
        match outcome {
            Ok(r) if r.changed => {
                let config = self.control.config();
                for hook in &self.hooks {
                    hook(&config);
                }
                tracing::info!(
                    cause = cause.as_str(),
                    version = r.version.number,
                    digest = r.version.short_digest(),
                    plans = config.live.limits.plans.len(),
                    "config reloaded"
                );
                if !r.restart_needed.is_empty() {
                    tracing::warn!(
                        settings = r.restart_needed.join(", "),
                        "config reloaded, but these changed settings take effect only on restart"
                    );
                }
            }
            Ok(r) if !r.restart_needed.is_empty() => tracing::warn!(
                cause = cause.as_str(),
                version = r.version.number,
                settings = r.restart_needed.join(", "),
                "config reloaded: nothing a reload applies changed; these changed settings take effect only on restart"
            ),
            Ok(r) if was_failing => tracing::info!(
                cause = cause.as_str(),
                version = r.version.number,
                "config reloaded: the files match the config in effect again; the earlier failure is cleared"
            ),
            Ok(r) => tracing::info!(
                cause = cause.as_str(),
                version = r.version.number,
                "config reloaded: nothing changed"
            ),
            Err(e) => {
                tracing::warn!(
                    cause = cause.as_str(),
                    error = %e,
                    "config reload refused; the running config stays in effect"
                );
                for hook in &self.failure_hooks {
                    hook(cause, e);
                }
            }
        }
    }

    fn refused(&self, why: String) -> String {
        self.control.note_failure(&why);
        why
    }

    /// Polls the watched files until `stop` fires, reloading when they
    /// change (see the module docs). Does nothing while `reload.watch`
    /// is off. Files back to the config in effect after a refused reload
    /// are reloaded too, which clears the failure.
    pub async fn watch(self: Arc<Self>, mut stop: Shutdown) {
        let mut refused: Option<String> = None;
        let mut unreadable = false;
        'poll: loop {
            let settings = self.control.config().live.reload.clone();
            if until(&mut stop, tokio::time::sleep(settings.poll_interval))
                .await
                .is_none()
            {
                return;
            }
            if !settings.watch {
                continue;
            }
            // Compared with the files in effect now: a reload by SIGHUP or
            // the admin API counts too.
            let Some(mut now) = self.poll(&mut stop, &mut unreadable).await else {
                continue;
            };
            let in_effect = now == self.control.version().digest;
            if (in_effect && !self.control.stats().last_failed) || refused.as_ref() == Some(&now) {
                continue;
            }
            // Wait until the files stay put for a debounce period.
            loop {
                if until(&mut stop, tokio::time::sleep(settings.debounce))
                    .await
                    .is_none()
                {
                    return;
                }
                let Some(again) = self.poll(&mut stop, &mut unreadable).await else {
                    continue 'poll;
                };
                if again == now {
                    break;
                }
                now = again;
            }
            // Refused files are not tried again until they change (or a
            // SIGHUP or `quotactl reload` asks, once the cause is fixed).
            match until(&mut stop, self.reload(Cause::FileChange)).await {
                None => return,
                Some(Ok(_)) => refused = None,
                Some(Err(_)) => refused = Some(now),
            }
        }
    }

    /// The watched files' fingerprint, read within the deadline; `None`
    /// when they could not be read in time (said once, until they can) or
    /// `stop` fired.
    async fn poll(&self, stop: &mut Shutdown, unreadable: &mut bool) -> Option<String> {
        let files = self.control.config().watched_files();
        let seed = self.control.config().digest_seed();
        match until(stop, self.reads.run(move || fingerprint(seed, &files))).await? {
            Ok(digest) => {
                if std::mem::take(unreadable) {
                    tracing::info!("watcher: the watched files can be read again");
                }
                Some(digest)
            }
            Err(e) => {
                if !std::mem::replace(unreadable, true) {
                    tracing::warn!(error = %e, "watcher: cannot read the watched files; watching them again once they can be read");
                }
                None
            }
        }
    }
}

/// `f`, unless `stop` fires first (`None`).
async fn until<T>(stop: &mut Shutdown, f: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        _ = stop.wait() => None,
        out = f => Some(out),
    }
}

/// Reads of the files on blocking threads, each given a deadline.
///
/// A read past its deadline is given up: its caller gets an error, and the
/// blocking thread, which cannot be interrupted, is left to finish. While
/// one such read has not returned, no read starts (each fails at once): a
/// file on a hung mount would otherwise take one more thread every poll.
/// Shutdown does not wait for them ([`crate::app`]).
struct Reads {
    deadline: Duration,
    /// Reads given up that have not returned yet.
    stuck: Arc<AtomicUsize>,
}

/// A read's states.
const RUNNING: u8 = 0;
const GIVEN_UP: u8 = 1;
const DONE: u8 = 2;

impl Reads {
    async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        if self.stuck.load(Ordering::Acquire) > 0 {
            return Err(
                "an earlier read of the config files has not returned (a file on a hung mount?); they are not read again until it does"
                    .to_owned(),
            );
        }
        let state = Arc::new(AtomicU8::new(RUNNING));
        let (mine, stuck) = (Arc::clone(&state), Arc::clone(&self.stuck));
        let task = tokio::task::spawn_blocking(move || {
            let out = read();
            if mine.swap(DONE, Ordering::AcqRel) == GIVEN_UP {
                stuck.fetch_sub(1, Ordering::AcqRel);
            }
            out
        });
        match tokio::time::timeout(self.deadline, task).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(format!("reading the config files failed: {e}")),
            Err(_) => {
                // Counted before it is marked, so its end never counts
                // down first.
                self.stuck.fetch_add(1, Ordering::AcqRel);
                if state
                    .compare_exchange(RUNNING, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // It returned just now.
                    self.stuck.fetch_sub(1, Ordering::AcqRel);
                }
                Err(format!(
                    "the config files could not be read within {} (a file on a hung mount?); gave up",
                    humantime::format_duration(self.deadline)
                ))
            }
        }
    }
}

/// SHA-256 (hex) over `seed` (the embedded config's text, which has no
/// file: [`crate::config::Config::digest_seed`]), then the paths and
/// contents of `files`: a directory
/// counts with the names and contents of its `*.yaml` and `*.yml` entries
/// (as limits directories are read), a file that cannot be read as its
/// path and the error kind. Every file is read through the config
/// reader's checks ([`crate::diag::files`]): what is no regular file
/// counts by its type, unread (a FIFO is never waited on, a device never
/// read), and one over [`MAX_FILE_BYTES`] by its size and modification
/// time. So it reads at most the cap per file and waits on nothing but
/// the file system itself.
pub fn fingerprint(seed: &str, files: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update([0]);
        if f.is_dir() {
            for entry in limits_entries(f).unwrap_or_default() {
                h.update(entry.as_os_str().as_encoded_bytes());
                h.update([0]);
                hash_file(&mut h, &entry);
            }
        } else {
            hash_file(&mut h, f);
        }
    }
    crate::core::hash::hex(&h.finalize())
}

fn hash_file(h: &mut Sha256, f: &Path) {
    let (file, meta) = match open_regular(f) {
        Ok(opened) => opened,
        Err(e) => {
            match NotRegularFile::of(&e) {
                Some(not) => h.update(format!("unread: {not}").as_bytes()),
                None => h.update(format!("unreadable: {:?}", e.kind()).as_bytes()),
            }
            return;
        }
    };
    // Too large to be read: its size and modification time tell a
    // change (a reload refuses it anyway).
    if meta.len() > MAX_FILE_BYTES {
        h.update(b"too large");
        h.update(meta.len().to_le_bytes());
        let modified = meta.modified().ok();
        let since = modified.and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok());
        h.update(since.unwrap_or_default().as_nanos().to_le_bytes());
        return;
    }
    // A file that grows while read is cut one byte past the cap.
    let mut bytes = Vec::new();
    match file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        Ok(n) => {
            h.update((n as u64).to_le_bytes());
            h.update(&bytes);
        }
        Err(e) => h.update(format!("unreadable: {:?}", e.kind()).as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;

    #[test]
    fn fingerprints_follow_contents_names_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let limits = dir.path().join("limits");
        std::fs::create_dir(&limits).unwrap();
        std::fs::write(&a, "x: 1\n").unwrap();
        std::fs::write(limits.join("one.yaml"), "domain: d\n").unwrap();
        let files = vec![a.clone(), limits.clone()];
        let first = fingerprint("", &files);
        assert_eq!(first.len(), 64);
        assert_eq!(fingerprint("", &files), first, "stable");
        std::fs::write(&a, "x: 2\n").unwrap();
        let second = fingerprint("", &files);
        assert_ne!(second, first, "content");
        std::fs::write(limits.join(".hidden.yaml"), "ignored").unwrap();
        std::fs::write(limits.join("notes.txt"), "ignored").unwrap();
        assert_eq!(fingerprint("", &files), second, "only yaml files count");
        std::fs::write(limits.join("two.yml"), "domain: e\n").unwrap();
        assert_ne!(fingerprint("", &files), second, "a new limits file");
        std::fs::remove_file(&a).unwrap();
        let gone = fingerprint("", &files);
        assert_ne!(gone, second, "a missing file");
    }

    #[test]
    fn fingerprints_never_wait_on_a_fifo_nor_read_a_device() {
        let dir = tempfile::tempdir().unwrap();
        let limits = dir.path().join("limits");
        std::fs::create_dir(&limits).unwrap();
        std::fs::write(limits.join("one.yaml"), "domain: d\n").unwrap();
        let files = vec![limits.clone()];
        let first = fingerprint("", &files);
        // Entries a limits directory may hold that are no regular files:
        // a FIFO without a writer (a plain open waits for one forever)
        // and a symlink to an endless device.
        let status = std::process::Command::new("mkfifo")
            .arg(limits.join("pipe.yaml"))
            .status()
            .expect("mkfifo runs");
        assert!(status.success());
        std::os::unix::fs::symlink("/dev/zero", limits.join("zero.yaml")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let f = files.clone();
        std::thread::spawn(move || tx.send(fingerprint("", &f)));
        let second = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("fingerprinting returns");
        assert_ne!(second, first, "the new entries count, by type");
        // Named directly, too.
        let direct = [limits.join("pipe.yaml"), limits.join("zero.yaml")];
        assert_eq!(fingerprint("", &direct), fingerprint("", &direct));
    }

    fn control(config: Config) -> Arc<Control> {
        use crate::core::{KeyHasher, ManualClock};
        let hasher = KeyHasher::with_secret([7; 16]);
        let table = config.live.limits.table(&hasher).unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let engine = Engine::new(table, hasher, Default::default(), clock);
        Control::new(Arc::new(engine), config, "d".into())
    }

    #[tokio::test]
    async fn a_read_that_hangs_fails_the_reload_at_its_deadline_and_holds_up_no_other() {
        let config = Config::from_yaml("default_plan: p\nplans: { p: {} }\n", "t.yaml").unwrap();
        let control = control(config.clone());
        // The loader hangs until told to go on, as a read on a hung mount.
        let (go, hold) = std::sync::mpsc::channel::<()>();
        let hold = std::sync::Mutex::new(hold);
        let hangs = std::sync::atomic::AtomicBool::new(true);
        let c = config.clone();
        let loader: Loader = Arc::new(move || {
            if hangs.swap(false, Ordering::SeqCst) {
                let _ = hold.lock().unwrap().recv();
            }
            Ok(c.clone())
        });
        let deadline = Duration::from_millis(200);
        let reloader = Reloader::new(Arc::clone(&control), loader).with_read_deadline(deadline);
        let started = crate::core::clock::Stopwatch::start();
        let e = reloader.reload(Cause::Admin).await.unwrap_err();
        assert!(started.nanos() >= deadline.as_nanos() as u64);
        assert!(started.seconds() < 5.0, "gave up in time");
        assert_eq!(
            e,
            "the config files could not be read within 200ms (a file on a hung mount?); gave up"
        );
        let stats = control.stats();
        assert_eq!((stats.failed, stats.last_failed), (1, true));
        // While that read has not returned, no other starts.
        let e = reloader.reload(Cause::Signal).await.unwrap_err();
        assert!(
            e.starts_with("an earlier read of the config files has not returned"),
            "{e}"
        );
        // Once it returns, reloads work again (and clear the failure).
        go.send(()).unwrap();
        let poll = async {
            loop {
                if let Ok(r) = reloader.reload(Cause::Signal).await {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let r = tokio::time::timeout(Duration::from_secs(10), poll)
            .await
            .expect("reloads work again");
        assert!(!r.changed);
        let stats = control.stats();
        assert_eq!((stats.last_failed, stats.last_error), (false, None));
    }

    #[test]
    fn files_over_the_cap_are_fingerprinted_by_size_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let huge = dir.path().join("huge.yaml");
        let f = std::fs::File::create(&huge).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let one = fingerprint("", std::slice::from_ref(&huge));
        f.set_len(MAX_FILE_BYTES + 2).unwrap();
        assert_ne!(fingerprint("", std::slice::from_ref(&huge)), one);
    }
}
