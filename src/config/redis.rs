//! The config's `redis` section: keeping this node in sync with others
//! through Redis (URL, password file, TLS CA, key prefix, cluster or
//! sentinel, sync interval, strict-mode deadline and fallback); its raw
//! form, validation and summary line, and reading a password file. The
//! URL's and the file's secrets never appear in `Debug` output, messages
//! or the summary (see [`redis_url`]).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::redis_url;
use super::values::{Dur, NonEmpty, format_duration, parse_duration};
use crate::diag::files::{read_file, read_text};
use crate::diag::{Issue, Seg, one_of, quoted};

/// Reads a password file (`redis.password_file`,
/// `--redis-password-file`) through [`read_text`]: its text without the
/// trailing line break. The error names the file and never its content.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    let text = read_text(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let password = text.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(password.to_owned())
}

/// The `redis` section: keep this node in sync with others through Redis.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `unix:///path/to.sock`.
    /// `Debug` hides any password in it.
    pub url: String,
    /// A password read from `password_file` (trailing newline removed);
    /// overrides one in the URL. `Debug` prints `<redacted>`.
    pub password: Option<String>,
    /// Prefix of every Redis key quotad writes.
    pub key_prefix: String,
    /// `url` is a seed node of a Redis Cluster.
    pub cluster: bool,
    /// `url` is a Redis Sentinel; this is the master's name to ask it for.
    pub sentinel_master: Option<String>,
    /// For `rediss://`: the CA certificate(s) (PEM) to trust instead of
    /// the system's roots.
    pub tls_ca: Option<Vec<u8>>,
    /// How often pending deltas are flushed.
    pub sync_interval: Duration,
    /// What a strict check does when Redis does not answer in time.
    pub on_redis_error: OnRedisError,
    /// How long a strict check waits for Redis.
    pub strict_deadline: Duration,
    /// Quotas and fixed windows at least this long are read from Redis on
    /// a node's first check of a key (`first_read_min_window`, default
    /// 1 min; `None`: `off`).
    pub first_read_min_window: Option<Duration>,
}

/// `redis.on_redis_error`: what a strict-mode check answers when Redis
/// fails or misses `strict_deadline`. (`sync` mode always decides
/// locally.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnRedisError {
    /// Decide on this node's view (the default).
    #[default]
    Local,
    /// Allow (fail open).
    Allow,
    /// Deny (fail closed).
    Deny,
}

impl OnRedisError {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            OnRedisError::Local => "local",
            OnRedisError::Allow => "allow",
            OnRedisError::Deny => "deny",
        }
    }
}

impl RedisSettings {
    /// The URL with every credential replaced by `<redacted>`, for logs
    /// and messages (see [`redis_url`]: parsed as its author meant it, so
    /// a password with reserved characters or a mistyped scheme is
    /// hidden too).
    pub fn redacted_url(&self) -> String {
        redis_url::redact_url(&self.url)
    }

    /// What takes this URL's and the password file's secrets out of text
    /// that may quote them, such as the `redis` crate's errors.
    pub fn scrub(&self) -> redis_url::Scrub {
        redis_url::Scrub::new(&self.url, self.password.as_deref())
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.redacted_url())
            .field(
                "password",
                &format_args!(
                    "{}",
                    if self.password.is_some() {
                        "<redacted>"
                    } else {
                        "None"
                    }
                ),
            )
            .field("key_prefix", &self.key_prefix)
            .field("cluster", &self.cluster)
            .field("sentinel_master", &self.sentinel_master)
            .field("tls_ca", &self.tls_ca.as_ref().map(|_| "<pem>"))
            .field("sync_interval", &self.sync_interval)
            .field("on_redis_error", &self.on_redis_error)
            .field("strict_deadline", &self.strict_deadline)
            .field("first_read_min_window", &self.first_read_min_window)
            .finish()
    }
}

impl RedisSettings {
    /// Settings for `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password: None,
            key_prefix: "quotad:".to_owned(),
            cluster: false,
            sentinel_master: None,
            tls_ca: None,
            sync_interval: Duration::from_millis(50),
            on_redis_error: OnRedisError::Local,
            strict_deadline: Duration::from_millis(20),
            first_read_min_window: Some(Duration::from_secs(60)),
        }
    }

    /// Checks the URL's scheme and that the `redis` crate reads it (the
    /// connection itself is the sync task's). Messages show the URL
    /// redacted and never the crate's own words about it.
    pub fn check_url(url: &str) -> Result<(), String> {
        use redis::IntoConnectionInfo;
        let scheme = url.split_once("://").map(|(s, _)| s);
        let invalid = |why: &str| {
            format!(
                "invalid Redis URL {}{why} (expected redis://[user:password@]host:port[/db], rediss:// for TLS, or unix:///path; percent-encode reserved characters in a password, such as %2F for /, or use redis.password_file)",
                quoted(&redis_url::redact_url(url))
            )
        };
        if !matches!(scheme, Some("redis" | "rediss" | "unix" | "redis+unix")) {
            return Err(invalid(""));
        }
        match url.into_connection_info() {
            Ok(_) => Ok(()),
            Err(e) => Err(invalid(&format!(
                ": {}",
                Self::new(url).scrub().text(&e.to_string())
            ))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the redis section (a mapping)")]
pub(super) struct RedisRaw {
    url: Option<NonEmpty>,
    password_file: Option<NonEmpty>,
    tls_ca_file: Option<NonEmpty>,
    key_prefix: Option<String>,
    cluster: Option<bool>,
    sentinel_master: Option<NonEmpty>,
    sync_interval: Option<Dur>,
    on_redis_error: Option<OnRedisErrorRaw>,
    strict_deadline: Option<Dur>,
    first_read_min_window: Option<FirstRead>,
}

/// `first_read_min_window`: a duration, or `off`.
struct FirstRead(Option<Duration>);

impl<'de> Deserialize<'de> for FirstRead {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = FirstRead;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration (like 1m) or off")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FirstRead, E> {
                if v == "off" {
                    return Ok(FirstRead(None));
                }
                match parse_duration(v) {
                    Ok(d) if !d.is_zero() => Ok(FirstRead(Some(d))),
                    Ok(_) => Err(E::custom("must be more than 0 (or off)")),
                    Err(e) => Err(E::custom(e)),
                }
            }
            // YAML 1.1 reads a bare `off` as false.
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FirstRead, E> {
                if v {
                    Err(E::custom("expected a duration (like 1m) or off (got true)"))
                } else {
                    Ok(FirstRead(None))
                }
            }
        }
        d.deserialize_any(V)
    }
}

struct OnRedisErrorRaw(OnRedisError);

impl<'de> Deserialize<'de> for OnRedisErrorRaw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let all = [OnRedisError::Local, OnRedisError::Allow, OnRedisError::Deny];
        one_of("value", &s, all, OnRedisError::as_str)
            .map(OnRedisErrorRaw)
            .map_err(de::Error::custom)
    }
}

impl RedisRaw {
    /// Validates the section; `password_file` and `tls_ca_file` are read
    /// relative to `base`. Redis needs `store.hash_secret` (`have_secret`).
    pub(super) fn build(self, base: &Path, have_secret: bool) -> Result<RedisSettings, Issue> {
        let r = self;
        let at = |field: &str| vec![Seg::key("redis"), Seg::key(field)];
        let Some(url) = r.url else {
            return Err(Issue::new(vec![Seg::key("redis")], "missing field 'url'"));
        };
        RedisSettings::check_url(&url.0).map_err(|why| Issue::new(at("url"), why))?;
        if !have_secret {
            return Err(Issue::new(
                at("url"),
                "Redis sync needs a hash secret every node shares, to name a key's Redis entries alike: set store.hash_secret (or QUOTAD_HASH_SECRET, or --hash-secret-file) to 32 hex digits, as `openssl rand -hex 16` prints",
            ));
        }
        let mut settings = RedisSettings::new(url.0);
        if let Some(p) = r.password_file {
            let password = read_password_file(&base.join(&p.0))
                .map_err(|why| Issue::new(at("password_file"), why))?;
            settings.password = Some(password);
        }
        if let Some(p) = r.tls_ca_file {
            if !settings.url.starts_with("rediss://") {
                return Err(Issue::new(
                    at("tls_ca_file"),
                    "applies only to rediss:// URLs (TLS)",
                ));
            }
            let path = base.join(&p.0);
            let pem = read_file(&path).map_err(|e| {
                Issue::new(
                    at("tls_ca_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            // Checked here, in words of our own: the redis crate's message
            // for a bad file would quote its bytes.
            match crate::net::tls::count_certificates(&pem) {
                Ok(1..) => {}
                Ok(0) => {
                    return Err(Issue::new(
                        at("tls_ca_file"),
                        format!("{} holds no PEM certificate", path.display()),
                    ));
                }
                Err(why) => {
                    return Err(Issue::new(
                        at("tls_ca_file"),
                        format!("{}: {why}", path.display()),
                    ));
                }
            }
            settings.tls_ca = Some(pem);
        }
        if let Some(prefix) = r.key_prefix {
            // Braces would change which part of a key Redis Cluster hashes.
            if prefix.contains(['{', '}']) {
                return Err(Issue::new(
                    at("key_prefix"),
                    "must not contain '{' or '}' (Redis Cluster hash tags are quotad's own)",
                ));
            }
            settings.key_prefix = prefix;
        }
        settings.cluster = r.cluster.unwrap_or(false);
        settings.sentinel_master = r.sentinel_master.map(|m| m.0);
        if settings.cluster && settings.sentinel_master.is_some() {
            return Err(Issue::new(
                at("sentinel_master"),
                "a Redis is either a Cluster or watched by Sentinel: set cluster or sentinel_master, not both",
            ));
        }
        if let Some(d) = r.sync_interval {
            settings.sync_interval = d.0;
        }
        if let Some(m) = r.on_redis_error {
            settings.on_redis_error = m.0;
        }
        if let Some(d) = r.strict_deadline {
            settings.strict_deadline = d.0;
        }
        if let Some(f) = r.first_read_min_window {
            settings.first_read_min_window = f.0;
        }
        Ok(settings)
    }
}

/// The summary's `redis:` line: the URL redacted, never the password.
pub(super) fn describe_redis(redis: Option<&RedisSettings>) -> String {
    match redis {
        None => "redis: off (this node alone, in memory)".to_owned(),
        Some(r) => format!(
            "redis: {}{}{}, key prefix {:?}, sync every {}, strict deadline {}, on error {}, first read of windows from {}",
            r.redacted_url(),
            if r.password.is_some() {
                " (password from a file)"
            } else {
                ""
            },
            match (&r.sentinel_master, r.cluster) {
                (Some(m), _) => format!(" (sentinel for {m})"),
                (None, true) => " (cluster seed)".to_owned(),
                (None, false) => String::new(),
            },
            r.key_prefix,
            format_duration(r.sync_interval),
            format_duration(r.strict_deadline),
            r.on_redis_error.as_str(),
            r.first_read_min_window
                .map_or_else(|| "off".to_owned(), format_duration)
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::RedisSettings;
    use crate::config::Config;
    use crate::config::tests::{assert_errors, parse_ok};

    #[test]
    fn redis_section_needs_a_url_a_known_scheme_and_the_hash_secret() {
        let base = "plans: { p: {} }\ndefault_plan: p\n";
        let secret = "store: { hash_secret: \"000102030405060708090a0b0c0d0e0f\" }\n";
        let c = parse_ok(&format!(
            "{base}{secret}redis: {{ url: \"redis://u:hunter2@10.0.0.1:6379/2\", key_prefix: \"rl:\", sync_interval: 20ms }}\n"
        ));
        let r = c.boot.redis.as_ref().expect("redis settings");
        assert_eq!(r.key_prefix, "rl:");
        assert_eq!(r.sync_interval, Duration::from_millis(20));
        assert_eq!(r.redacted_url(), "redis://u:<redacted>@10.0.0.1:6379/2");
        let unix = RedisSettings::new("unix:///run/redis.sock?db=1&pass=hunter2");
        assert_eq!(
            unix.redacted_url(),
            "unix:///run/redis.sock?db=1&pass=<redacted>"
        );
        let shown = format!("{c:?} {}", c.summary());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            c.summary()
                .contains("redis: redis://u:<redacted>@10.0.0.1:6379/2")
        );
        assert_errors(&[
            (
                format!("{base}{secret}redis: {{ key_prefix: x }}\n"),
                "t.yaml:4:8: redis: missing field 'url'".to_owned(),
            ),
            (
                format!("{base}{secret}redis: {{ url: \"http://h\" }}\n"),
                "t.yaml:4:15: redis.url: invalid Redis URL 'http://h' (expected redis://[user:password@]host:port[/db], rediss:// for TLS, or unix:///path; percent-encode reserved characters in a password, such as %2F for /, or use redis.password_file)".to_owned(),
            ),
            (
                format!("{base}{secret}redis: {{ url: \"redis://h:1\", cluster: true, sentinel_master: m }}\n"),
                "t.yaml:4:62: redis.sentinel_master: a Redis is either a Cluster or watched by Sentinel: set cluster or sentinel_master, not both".to_owned(),
            ),
            (
                format!("{base}{secret}redis: {{ url: \"redis://h:1\", key_prefix: \"a{{b}}\" }}\n"),
                "t.yaml:4:42: redis.key_prefix: must not contain '{' or '}' (Redis Cluster hash tags are quotad's own)".to_owned(),
            ),
            (
                format!("{base}redis: {{ url: \"redis://h:1\" }}\n"),
                "t.yaml:3:15: redis.url: Redis sync needs a hash secret every node shares, to name a key's Redis entries alike: set store.hash_secret (or QUOTAD_HASH_SECRET, or --hash-secret-file) to 32 hex digits, as `openssl rand -hex 16` prints".to_owned(),
            ),
        ]);
    }

    #[test]
    fn first_read_min_window_is_a_duration_or_off() {
        let base = "plans: { p: {} }\ndefault_plan: p\nstore: { hash_secret: \"000102030405060708090a0b0c0d0e0f\" }\n";
        let first = |extra: &str| {
            parse_ok(&format!("{base}redis: {{ url: \"redis://h:1\"{extra} }}\n"))
                .boot
                .redis
                .and_then(|r| r.first_read_min_window)
        };
        assert_eq!(first(""), Some(Duration::from_secs(60)));
        assert_eq!(
            first(", first_read_min_window: 1h"),
            Some(Duration::from_secs(3_600))
        );
        assert_eq!(first(", first_read_min_window: off"), None);
        let c = parse_ok(&format!("{base}redis: {{ url: \"redis://h:1\" }}\n"));
        assert!(
            c.summary().contains("first read of windows from 1m"),
            "{}",
            c.summary()
        );
        assert_errors(&[
            (
                format!("{base}redis: {{ url: \"redis://h:1\", first_read_min_window: 0s }}\n"),
                "t.yaml:4:53: redis.first_read_min_window: must be more than 0 (or off)".to_owned(),
            ),
            (
                format!("{base}redis: {{ url: \"redis://h:1\", first_read_min_window: soon }}\n"),
                "t.yaml:4:53: redis.first_read_min_window: invalid duration 'soon' (expected an integer and a unit ms, s, m or h, such as 500ms, 10s or 2m)".to_owned(),
            ),
        ]);
    }

    #[test]
    fn redis_password_file_is_read_relative_to_the_config_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("redis.pass"), "s3cret-pass\n").unwrap();
        let yaml = "plans: { p: {} }\ndefault_plan: p\nstore: { hash_secret: \"000102030405060708090a0b0c0d0e0f\" }\nredis: { url: \"redis://h:1\", password_file: redis.pass }\n";
        let path = dir.path().join("q.yaml");
        std::fs::write(&path, yaml).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(
            c.boot.redis.as_ref().and_then(|r| r.password.as_deref()),
            Some("s3cret-pass")
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        std::fs::write(dir.path().join("redis.pass"), "\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("redis.password_file: ") && err.ends_with("redis.pass is empty"),
            "{err}"
        );
    }
}
