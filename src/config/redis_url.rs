//! Redis URLs as quotad shows them: with every credential replaced by
//! `<redacted>`, found by parsing the URL the way its author meant it,
//! not the way a strict URL parser would.
//!
//! A password typed into `redis.url` or `--redis` may hold any of
//! `: / ? # [ ] @ ! $ & ' ( ) * + , ; = %` and spaces, raw or
//! percent-escaped, and the scheme may be mistyped (`redis:/`,
//! `rediss//`, `redis:user:pw@host`, `http://`, none at all). A strict
//! parser would end the authority at the first `/`, `?` or `#` and put
//! the rest of the password in the path, in plain sight; so this module
//! takes the author's reading instead:
//!
//! - the userinfo is everything between `scheme://` (or, with no
//!   well-formed scheme, the very start) and the **last** `@`; all of it
//!   is redacted, except a user name made only of `[A-Za-z0-9._~-]`
//!   followed by `:`, in userinfo that is well-formed as it stands (so
//!   no reading of it could take part of the password for the user);
//! - a query credential (`pass=` or `password=`, as `unix://` URLs carry
//!   them) is redacted up to the end of the URL, since the password may
//!   hold `&` or `#`;
//! - without an `@`, what stands where the host should be must look like
//!   `host[:port]`; anything else (`redis://:secret`) is redacted whole.
//!
//! When in doubt, more is redacted. [`Scrub`] does the same for text
//! that merely *contains* the URL's secrets, such as an error from the
//! `redis` crate.

use std::sync::Arc;

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// Query keys whose value is a password.
const QUERY_SECRETS: [&str; 2] = ["pass=", "password="];

/// `url` with every credential replaced by [`REDACTED`] (see the module
/// docs); control characters are escaped, so the result is one line.
pub fn redact_url(url: &str) -> String {
    let (head, query_secret) = split_query_secret(url);
    let mut out = match scheme(head) {
        Some((scheme, rest)) => format!("{scheme}://{}", redact_rest(rest)),
        None => redact_rest(head),
    };
    if query_secret.is_some() && !out.ends_with(REDACTED) {
        out.push_str(REDACTED);
    }
    out.chars()
        .flat_map(|c| {
            let escaped = c.is_control().then(|| c.escape_default());
            escaped
                .into_iter()
                .flatten()
                .chain((!c.is_control()).then_some(c))
        })
        .collect()
}

/// `url` cut after its first query credential's `=`, and the secret cut
/// off (`None` without one).
fn split_query_secret(url: &str) -> (&str, Option<&str>) {
    let lower = url.to_ascii_lowercase();
    let found = QUERY_SECRETS
        .iter()
        .flat_map(|key| [format!("?{key}"), format!("&{key}")])
        .filter_map(|needle| lower.find(&needle).map(|at| at + needle.len()))
        .min();
    match found {
        Some(end) => (&url[..end], Some(&url[end..])),
        None => (url, None),
    }
}

/// A well-formed `scheme://`: the scheme and what follows.
fn scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    well_formed.then_some((scheme, rest))
}

/// `s` past a leading word and the `:` and `/` that follow it.
fn past_mistyped_scheme(s: &str) -> &str {
    let word = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .unwrap_or(s.len());
    let rest = &s[word..];
    rest.trim_start_matches([':', '/'])
}

/// Everything after the scheme (or all of a URL without one).
fn redact_rest(rest: &str) -> String {
    let Some(at) = rest.rfind('@') else {
        return if plausible_location(rest) {
            rest.to_owned()
        } else {
            REDACTED.to_owned()
        };
    };
    let (userinfo, location) = (&rest[..at], &rest[at + 1..]);
    if !plausible_location(location) {
        return REDACTED.to_owned();
    }
    match userinfo.split_once(':') {
        Some((user, _)) if well_formed(userinfo) && plain_user(user) => {
            format!("{user}:{REDACTED}@{location}")
        }
        _ => format!("{REDACTED}@{location}"),
    }
}

/// A user name shown as is: short, and only characters that cannot be
/// a mistyped password's separators.
fn plain_user(user: &str) -> bool {
    user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-'))
}

/// Userinfo as RFC 3986 allows it (unreserved, sub-delims, `:` and
/// valid `%XX`): every parser then reads the same user name from it.
fn well_formed(userinfo: &str) -> bool {
    let b = userinfo.as_bytes();
    b.iter().enumerate().all(|(i, &c)| match c {
        b'%' => b
            .get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)),
        c => c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(&c),
    })
}

/// `host[:port]` (or `[v6]:port`, or empty for `unix:///path`),
/// optionally followed by a path, a query and a fragment of plain
/// characters: nothing where a mistyped password's pieces could be.
fn plausible_location(s: &str) -> bool {
    let end = s.find(['/', '?', '#']).unwrap_or(s.len());
    let (authority, tail) = s.split_at(end);
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, after)) => (
                addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':'),
                after.strip_prefix(':').unwrap_or(after),
            ),
            None => return false,
        },
        None => {
            let (host, port) = authority.split_once(':').unwrap_or((authority, ""));
            let ok = host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            (ok, port)
        }
    };
    let port_ok = port.chars().all(|c| c.is_ascii_digit());
    let (path, rest) = tail.split_at(tail.find(['?', '#']).unwrap_or(tail.len()));
    let (query, fragment) = rest.split_at(rest.find('#').unwrap_or(rest.len()));
    let plain = |s: &str, extra: &[char]| {
        s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~') || extra.contains(&c)
        })
    };
    host_ok
        && port_ok
        && plain(path, &['/'])
        && plain(query.strip_prefix('?').unwrap_or(query), &['=', '&'])
        && plain(fragment.strip_prefix('#').unwrap_or(fragment), &[])
}

/// The secrets one Redis URL (and a password file) hold, to take out of
/// text that may quote them, such as the `redis` crate's errors.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Scrub {
    /// The URL as given and as shown, then the secrets longest first.
    url: Option<(String, String)>,
    secrets: Arc<[String]>,
}

impl std::fmt::Debug for Scrub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrub({} secrets)", self.secrets.len())
    }
}

impl Scrub {
    /// The secrets of `url` and `password` (from a password file).
    pub fn new(url: &str, password: Option<&str>) -> Self {
        let (head, query_secret) = split_query_secret(url);
        // The text past the scheme, also past any `/` too many; without
        // a well-formed scheme, both as it is and past a mistyped one
        // (`redis:/`, `rediss//`, `redis:`).
        let rests = match scheme(head) {
            Some((_, rest)) => vec![rest, rest.trim_start_matches('/')],
            None => vec![head, past_mistyped_scheme(head)],
        };
        let mut secrets: Vec<String> = Vec::new();
        let mut add = |s: &str| {
            for s in [s.to_owned(), percent_decode(s)] {
                if !s.is_empty() && !secrets.contains(&s) {
                    secrets.push(s);
                }
            }
        };
        // A query password ends at some `&` or `#`, or at the end.
        if let Some(q) = query_secret {
            add(q);
            for (at, _) in q.match_indices(['&', '#']) {
                add(&q[..at]);
            }
        }
        // The userinfo, and all of it when the password may go on past
        // its last `@` (`redis://:p@ss`) or there is no `@`
        // (`redis://:secret`); each also without a user name.
        let mut spans = Vec::new();
        for rest in rests {
            match rest.rfind('@') {
                Some(at) => {
                    spans.push(&rest[..at]);
                    if !plausible_location(&rest[at + 1..]) {
                        spans.push(rest);
                    }
                }
                None if !plausible_location(rest) => spans.push(rest),
                None => {}
            }
        }
        for span in spans {
            add(span);
            if let Some((_, pw)) = span.split_once(':') {
                add(pw);
            }
        }
        if let Some(p) = password {
            add(p);
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self {
            url: Some((url.to_owned(), redact_url(url))),
            secrets: secrets.into(),
        }
    }

    /// `text` with the URL shown redacted and every secret replaced by
    /// [`REDACTED`].
    pub fn text(&self, text: &str) -> String {
        let mut out = match &self.url {
            Some((raw, shown)) if !raw.is_empty() => text.replace(raw.as_str(), shown),
            _ => text.to_owned(),
        };
        for s in self.secrets.iter() {
            out = out.replace(s.as_str(), REDACTED);
        }
        out
    }
}

/// `%XX` escapes decoded (invalid ones and invalid UTF-8 kept as they
/// are, lossily).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every character a URL reserves, and a space, each between two
    /// pieces of one secret: no piece may ever be shown.
    const RESERVED: &str = ":/?#[]@!$&'()*+,;=% ";

    fn password() -> String {
        let mut pw = String::from("sekA");
        for (i, c) in RESERVED.chars().enumerate() {
            pw.push(c);
            pw.push_str(&format!("sek{i}"));
        }
        pw
    }

    /// Percent-encodes every byte outside the unreserved set.
    fn encoded(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b => format!("%{b:02X}"),
            })
            .collect()
    }

    /// The URLs to try: well-formed and mistyped, with the password raw,
    /// percent-encoded, with and without a user name.
    fn urls_with(pw: &str) -> Vec<String> {
        let mut urls = Vec::new();
        for pw in [pw.to_owned(), encoded(pw)] {
            for prefix in [
                "redis://",
                "rediss://",
                "redis:/",
                "rediss//",
                "redis:",
                "http://",
                "",
                "redis+unix://",
                "unix://",
                "redis:///",
            ] {
                for userinfo in [format!(":{pw}"), format!("user:{pw}"), pw.clone()] {
                    urls.push(format!("{prefix}{userinfo}@10.0.0.1:6379/0"));
                    urls.push(format!("{prefix}{userinfo}@redis.example/1?protocol=resp3"));
                    urls.push(format!("{prefix}{userinfo}"));
                }
            }
            urls.push(format!("unix:///run/redis.sock?db=1&pass={pw}"));
            urls.push(format!("unix:///run/redis.sock?pass={pw}&db=1"));
            urls.push(format!("unix:///run/redis.sock?PASSWORD={pw}"));
            urls.push(format!("redis://10.0.0.1/0?pass={pw}"));
        }
        urls
    }

    #[test]
    fn no_piece_of_a_password_survives_redaction() {
        for url in urls_with(&password()) {
            let shown = redact_url(&url);
            assert!(!shown.contains("sek"), "{url:?} shown as {shown:?}");
            assert!(shown.contains(REDACTED), "{url:?} shown as {shown:?}");
            assert!(!shown.contains('\n'), "{shown:?}");
        }
    }

    #[test]
    fn what_is_not_secret_stays_readable() {
        for (url, want) in [
            (
                "redis://u:hunter2@10.0.0.1:6379/2",
                "redis://u:<redacted>@10.0.0.1:6379/2",
            ),
            (
                "redis://:p/w?x#y@redis.prod:6379/2",
                "redis://<redacted>@redis.prod:6379/2",
            ),
            (
                "redis://:pa:ss@redis.prod",
                "redis://:<redacted>@redis.prod",
            ),
            ("redis:///:hunter2", "redis://<redacted>"),
            ("redis://h:1/0?hunter2:x", "redis://<redacted>"),
            ("redis://hunter2@h:1", "redis://<redacted>@h:1"),
            ("redis://pa%2Fss:x@h:1", "redis://<redacted>@h:1"),
            ("redis://10.0.0.1:6379/0", "redis://10.0.0.1:6379/0"),
            (
                "rediss://[::1]:6380/#insecure",
                "rediss://[::1]:6380/#insecure",
            ),
            ("redis://:hunter2", "redis://<redacted>"),
            ("redis://h:hunter2", "redis://<redacted>"),
            ("redis:/u:hunter2@h:1", "<redacted>@h:1"),
            ("rediss//:a@b@h:1", "<redacted>@h:1"),
            ("localhost:6379", "localhost:6379"),
            ("hunter2 and more", "<redacted>"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
            (
                "unix:///run/redis.sock?db=1&pass=a&b#c",
                "unix:///run/redis.sock?db=1&pass=<redacted>",
            ),
            ("redis://h:1/\n0", "redis://<redacted>"),
        ] {
            assert_eq!(redact_url(url), want, "{url:?}");
        }
    }

    #[test]
    fn scrub_takes_the_secrets_out_of_any_text() {
        for url in urls_with(&password()) {
            let scrub = Scrub::new(&url, Some("from-a-file"));
            let text = format!(
                "error for {url}: auth failed for {pw}; from-a-file",
                pw = password()
            );
            let clean = scrub.text(&text);
            assert!(!clean.contains("sek"), "{url:?}: {clean:?}");
            assert!(!clean.contains("from-a-file"), "{clean:?}");
        }
        let plain = Scrub::new("redis://10.0.0.1:6379", None);
        assert_eq!(plain.text("refused"), "refused");
        assert_eq!(Scrub::default().text("x"), "x");
    }

    proptest::proptest! {
        /// Any text at all: no panic, one line out, and a password
        /// marked in the userinfo never shown.
        #[test]
        fn any_url_is_redacted_without_panicking(
            head in "\\PC{0,40}",
            pw in "[a-z:/?#\\[\\]@!$&'()*+,;=% ]{0,20}",
            tail in "\\PC{0,40}",
        ) {
            let url = format!("{head}:SEKRET{pw}@{tail}");
            let shown = redact_url(&url);
            proptest::prop_assert!(!shown.contains('\n'));
            let _ = Scrub::new(&url, Some(&pw)).text(&url);
            if !tail.contains("SEKRET") && !head.contains("SEKRET") {
                proptest::prop_assert!(!shown.contains("SEKRET"), "{:?} -> {:?}", url, shown);
            }
        }
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }
}
