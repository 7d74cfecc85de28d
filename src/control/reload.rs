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
//!
//! A file larger than [`MAX_FILE_BYTES`] is refused by the config reader
//! without being read (a config is kilobytes; a huge one is a mistake,
//! and reading and parsing it would cost memory and seconds on every
//! attempt), and the watcher fingerprints it by size and modification
//! time instead of hashing it every poll.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{Control, Reloaded};
use crate::config::Config;
use crate::shutdown::Shutdown;

/// The largest config or limits file a reload reads (as at start).
pub use crate::config::MAX_FILE_BYTES;

/// Reads the config again, as it was read at start; an error is one line
/// naming the file, line and field.
pub type Loader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Something to run after a reload took effect, with the new config.
pub type Hook = Box<dyn Fn(&Config) + Send + Sync>;

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
    fn as_str(self) -> &'static str {
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
    one_at_a_time: tokio::sync::Mutex<()>,
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
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs `hook` after each reload that took effect.
    pub fn on_reload(&mut self, hook: Hook) {
        self.hooks.push(hook);
    }

    /// Reads the files and puts them in effect, or refuses them (the
    /// running config stays); the error is one line naming the file and
    /// field.
    pub async fn reload(&self, cause: Cause) -> Result<Reloaded, String> {
        let _one = self.one_at_a_time.lock().await;
        let before = self.control.config().watched_files();
        let loader = Arc::clone(&self.loader);
        // Reading files is blocking I/O: off the request threads.
        let loaded = tokio::task::spawn_blocking(move || {
            // Fingerprinted before reading: should a file change while it
            // is read, the next poll sees a difference and reloads again.
            let digest = fingerprint(&before);
            loader().map(|config| {
                let after = config.watched_files();
                let digest = if after == before {
                    digest
                } else {
                    fingerprint(&after)
                };
                (config, digest)
            })
        })
        .await;
        let outcome = match loaded {
            // Control counts what it refuses; files that did not even
            // load are counted here.
            Ok(Ok((config, digest))) => self
                .control
                .reload(config, digest)
                .map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(self.refused(e)),
            Err(e) => Err(self.refused(format!("reload task failed: {e}"))),
        };
        match &outcome {
            Ok(r) if r.changed => {
                let config = self.control.config();
                for hook in &self.hooks {
                    hook(&config);
                }
                tracing::info!(
                    cause = cause.as_str(),
                    version = r.version.number,
                    digest = r.version.short_digest(),
                    plans = config.limits.plans.len(),
                    "config reloaded"
                );
                if !r.restart_needed.is_empty() {
                    tracing::warn!(
                        settings = r.restart_needed.join(", "),
                        "config reloaded, but these changed settings take effect only on restart"
                    );
                }
            }
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
            }
        }
        outcome
    }

    fn refused(&self, why: String) -> String {
        self.control.note_failure(&why);
        why
    }

    /// Polls the watched files until `stop` fires, reloading when they
    /// change (see the module docs). Does nothing while `reload.watch`
    /// is off.
    pub async fn watch(self: Arc<Self>, mut stop: Shutdown) {
        let mut refused: Option<String> = None;
        loop {
            let settings = self.control.config().reload.clone();
            tokio::select! {
                _ = stop.wait() => return,
                _ = tokio::time::sleep(settings.poll_interval) => {}
            }
            if !settings.watch {
                continue;
            }
            // Compared with the files in effect now: a reload by SIGHUP or
            // the admin API counts too.
            let mut now = self.current_fingerprint().await;
            if now == self.control.version().digest || refused.as_ref() == Some(&now) {
                continue;
            }
            // Wait until the files stay put for a debounce period.
            loop {
                tokio::select! {
                    _ = stop.wait() => return,
                    _ = tokio::time::sleep(settings.debounce) => {}
                }
                let again = self.current_fingerprint().await;
                if again == now {
                    break;
                }
                now = again;
            }
            // Refused files are not tried again until they change (or a
            // SIGHUP or `quotactl reload` asks, once the cause is fixed).
            refused = self.reload(Cause::FileChange).await.err().map(|_| now);
        }
    }

    async fn current_fingerprint(&self) -> String {
        let files = self.control.config().watched_files();
        tokio::task::spawn_blocking(move || fingerprint(&files))
            .await
            .unwrap_or_default()
    }
}

/// SHA-256 (hex) over the paths and contents of `files`: a directory
/// counts with the names and contents of its `*.yaml` and `*.yml` files
/// (as limits directories are read), a file that cannot be read as its
/// path and the error kind.
pub fn fingerprint(files: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update([0]);
        if f.is_dir() {
            for entry in yaml_files(f) {
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
    // Too large to be read: its size and modification time tell a
    // change (a reload refuses it anyway).
    if let Ok(meta) = std::fs::metadata(f)
        && meta.len() > MAX_FILE_BYTES
    {
        h.update(b"too large");
        h.update(meta.len().to_le_bytes());
        let modified = meta.modified().ok();
        let since = modified.and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok());
        h.update(since.unwrap_or_default().as_nanos().to_le_bytes());
        return;
    }
    match std::fs::read(f) {
        Ok(bytes) => {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        Err(e) => h.update(format!("unreadable: {:?}", e.kind()).as_bytes()),
    }
}

/// A directory's `*.yaml` and `*.yml` files, dotfiles skipped, in name
/// order.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_follow_contents_names_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let limits = dir.path().join("limits");
        std::fs::create_dir(&limits).unwrap();
        std::fs::write(&a, "x: 1\n").unwrap();
        std::fs::write(limits.join("one.yaml"), "domain: d\n").unwrap();
        let files = vec![a.clone(), limits.clone()];
        let first = fingerprint(&files);
        assert_eq!(first.len(), 64);
        assert_eq!(fingerprint(&files), first, "stable");
        std::fs::write(&a, "x: 2\n").unwrap();
        let second = fingerprint(&files);
        assert_ne!(second, first, "content");
        std::fs::write(limits.join(".hidden.yaml"), "ignored").unwrap();
        std::fs::write(limits.join("notes.txt"), "ignored").unwrap();
        assert_eq!(fingerprint(&files), second, "only yaml files count");
        std::fs::write(limits.join("two.yml"), "domain: e\n").unwrap();
        assert_ne!(fingerprint(&files), second, "a new limits file");
        std::fs::remove_file(&a).unwrap();
        let gone = fingerprint(&files);
        assert_ne!(gone, second, "a missing file");
    }

    #[test]
    fn files_over_the_cap_are_fingerprinted_by_size_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let huge = dir.path().join("huge.yaml");
        let f = std::fs::File::create(&huge).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let one = fingerprint(std::slice::from_ref(&huge));
        f.set_len(MAX_FILE_BYTES + 2).unwrap();
        assert_ne!(fingerprint(std::slice::from_ref(&huge)), one);
    }
}
