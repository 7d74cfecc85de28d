//! Reading YAML with one-line, located error messages: the shared parser
//! options, the mapping of serde-saphyr errors to [`ConfigError`]s, and the
//! second pass that finds the line of a validation [`Issue`] by its field
//! path, and the error types ([`ConfigError`], [`Diagnostic`]). Both file
//! formats (the daemon config and envoyproxy/ratelimit limits files) read
//! through here. A file's every mistake is reported, each on its line, up
//! to [`recover::MAX_REPORTED`]: [`parse_all`] reads past each ([`recover`]),
//! [`locate_all`] locates each validation issue.
//!
//! **Messages never quote what a file holds** unless it is a field the
//! file's format knows: `--config` pointed at a token or key file must
//! not print it. So the parser's and serde's own words are rendered
//! without the input they carry: a type mismatch names the kind of value
//! found (`got string`), never the value; a syntax error keeps at most
//! one quoted punctuation character (`unclosed bracket '['`); an unknown
//! field is named only when it is one edit or two from a known one (`did
//! you mean`), and is otherwise pointed at by line and column. What the
//! validators of known fields say (`unknown unit 'fortnight'`) stays:
//! the author wrote it into that field.

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, MessageFormatter, Spanned};

use crate::diag::{Issue, Seg, quoted};

pub(crate) mod recover;

/// Why a config could not be loaded. `Display` is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {error}")]
    Read {
        /// The path as given.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The text is not well-formed YAML.
    #[error("{0}")]
    Syntax(Box<Diagnostic>),
    /// Well-formed YAML that is not a valid config.
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
    /// Several mistakes in one file, each located, one per line, in the
    /// order found.
    #[error("{}", several(.errors, *.stopped))]
    Several {
        /// The mistakes (at least two), at most [`recover::MAX_REPORTED`].
        errors: Vec<Diagnostic>,
        /// Whether reading stopped at [`recover::MAX_REPORTED`] with more
        /// to read.
        stopped: bool,
    },
}

/// `Several`'s text: a line per mistake, and a last line when reading
/// stopped at the cap.
fn several(errors: &[Diagnostic], stopped: bool) -> String {
    let mut lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    if stopped {
        lines.push(format!(
            "(stopped after {} errors; fix these and check again)",
            errors.len()
        ));
    }
    lines.join("\n")
}

impl ConfigError {
    /// Where and why, for syntax and validation errors (the first, of
    /// several).
    pub fn diagnostic(&self) -> Option<&Diagnostic> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax(d) | ConfigError::Invalid(d) => Some(d),
            ConfigError::Several { errors, .. } => errors.first(),
        }
    }

    /// Every located mistake: one for syntax and validation errors, each
    /// of several, none for a file that could not be read.
    pub fn diagnostics(&self) -> Vec<&Diagnostic> {
        match self {
            ConfigError::Several { errors, .. } => errors.iter().collect(),
            other => other.diagnostic().into_iter().collect(),
        }
    }

    /// One error of `errors` (at least one), or [`ConfigError::Several`].
    fn gather(mut errors: Vec<ConfigError>, stopped: bool) -> ConfigError {
        if errors.len() == 1
            && !stopped
            && let Some(e) = errors.pop()
        {
            return e;
        }
        let mut diagnostics = Vec::with_capacity(errors.len());
        for e in errors {
            match e {
                ConfigError::Syntax(d) | ConfigError::Invalid(d) => diagnostics.push(*d),
                ConfigError::Several { errors, .. } => diagnostics.extend(errors),
                // Reading the file happens before parsing: never gathered.
                read @ ConfigError::Read { .. } => return read,
            }
        }
        ConfigError::Several {
            errors: diagnostics,
            stopped,
        }
    }
}

/// A located config error: `origin:line:column: path: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file (or other origin) the text came from.
    pub origin: String,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    /// Field path such as `plans.free.limits[1].per`; empty for the whole
    /// document or a syntax error.
    pub path: String,
    /// Lowercase, single-line reason.
    pub reason: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.reason)
    }
}

/// The most YAML nodes (mappings, lists and scalars) one file may hold:
/// about 500,000 static keys (four nodes each). serde-saphyr's default
/// (250,000) stopped a config at about 62,000 keys. Locating a mistake
/// reads the file again into a tree of positions, under 100 bytes a
/// node: at most about 200 MB, and only to report a mistake.
pub const MAX_NODES: usize = 2_000_000;

fn options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_NODES;
    // Events: a node's start and end (mappings, lists) or one (scalars).
    budget.max_events = budget.max_events.max(2 * MAX_NODES + 16);
    o.budget = Some(budget);
    // Messages are rendered here, one line each; no source snippets.
    o.with_snippet = false;
    // Repeated keys reach the visitors, which report them with both lines
    // (`plans`, `keys`) or as a duplicate field (everything else).
    o.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    o
}

/// Deserializes `positions`' text, tracking the field path of any error;
/// the tree of positions (read only to place a missing field) is shared
/// by every reading of that text.
fn parse_in<T: for<'de> Deserialize<'de>>(
    positions: &Positions<'_>,
    origin: &str,
) -> Result<T, ConfigError> {
    let mut path = None;
    serde_saphyr::with_deserializer_from_str_with_options(positions.text, options(), |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = Some(e.path().clone());
            e.into_inner()
        })
    })
    .map_err(|e| saphyr_error(&e, path.as_ref(), positions, origin))
}

/// Deserializes `text`, reading past each mistake ([`recover`]): every
/// mistake in it, up to [`recover::MAX_REPORTED`], each located.
pub(crate) fn parse_all<T: for<'de> Deserialize<'de>>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    // Past a syntax error nothing can be read: it is the last reported.
    // An error where the last one was is that one again (met anew while
    // skipping): reading ends without it.
    // One tree of positions for every pass.
    let positions = Positions::of(text);
    let out = recover::read_all(
        || parse_in(&positions, origin),
        |e| matches!(e, ConfigError::Syntax(_)),
        |e, last| {
            let at = |e: &ConfigError| e.diagnostic().map(|d| (d.line, d.column, d.reason.clone()));
            at(e).is_some() && at(e) == at(last)
        },
    );
    match out.value {
        Some(value) if out.errors.is_empty() => Ok(value),
        _ => Err(ConfigError::gather(out.errors, out.stopped)),
    }
}

/// Turns a serde-saphyr error into a one-line [`ConfigError`].
fn saphyr_error(
    err: &serde_saphyr::Error,
    path: Option<&serde_path_to_error::Path>,
    positions: &Positions<'_>,
    origin: &str,
) -> ConfigError {
    use serde_saphyr::Error as E;

    let mut location = err.location();
    let mut inner = err.without_snippet();
    if let E::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    let mut segs: Vec<Seg> = path.map(segments).unwrap_or_default();
    let mut syntax = false;
    let reason = match inner {
        E::ExternalMessage { msg, .. } => {
            syntax = true;
            format!("invalid yaml: {}", clean(&without_quoted(msg)))
        }
        E::Eof { .. } => {
            syntax = true;
            "invalid yaml: unexpected end of file".to_owned()
        }
        E::MultipleDocuments { .. } => {
            syntax = true;
            "the file must hold a single yaml document".to_owned()
        }
        E::Message { msg, .. } => clean(msg),
        E::SerdeUnknownField {
            field, expected, ..
        } => {
            if matches!(segs.last(), Some(Seg::Key { name, .. }) if name == field) {
                segs.pop();
            }
            unknown_field(field, expected)
        }
        E::SerdeMissingField { field, .. } => {
            // The parser points at the last key it read; the mapping that
            // lacks the field is a better place.
            if let Some(l) = positions.tree().and_then(|t| find(t, &segs, false)) {
                location = Some(l);
            }
            format!("missing field '{field}'")
        }
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        }
        | E::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => format!("expected {} (got {})", clean(expected), kind_of(unexpected)),
        E::Unexpected { expected, .. } => match *expected {
            "mapping start" => "expected a mapping".to_owned(),
            "sequence start" => "expected a list".to_owned(),
            "string scalar" => "expected a string".to_owned(),
            other => format!("expected {}", clean(other)),
        },
        E::DuplicateMappingKey { .. } => "duplicate key".to_owned(),
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => unknown("value", variant, expected),
        E::NonFiniteFloat { .. } => "expected a finite number".to_owned(),
        // Past a reading limit nothing more can be read: it ends the
        // reading, like a syntax error, and has no field path.
        E::Budget { .. }
        | E::AliasReplayCounterOverflow { .. }
        | E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::RecursiveReferencesRequireWeakTypes { .. } => {
            syntax = true;
            beyond_limit(inner)
        }
        other => clean(&without_quoted(
            &serde_saphyr::DefaultMessageFormatter.format_message(other),
        )),
    };
    let diagnostic = Box::new(Diagnostic {
        origin: origin.to_owned(),
        line: location.map(|l| l.line()).filter(|&l| l > 0),
        column: location.map(|l| l.column()).filter(|&c| c > 0),
        path: if syntax {
            String::new()
        } else {
            render_path(&segs)
        },
        reason,
    });
    if syntax {
        ConfigError::Syntax(diagnostic)
    } else {
        ConfigError::Invalid(diagnostic)
    }
}

/// Why reading stopped at one of the reader's limits: the budget's
/// nodes (the one a large file meets), or another budget or alias limit
/// (met again while an item is skipped, so each ends the reading).
fn beyond_limit(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::Error as E;
    use serde_saphyr::budget::BudgetBreach;
    match e {
        E::Budget {
            breach: BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. },
            ..
        } => format!(
            "the file is too big to read: more than {MAX_NODES} yaml nodes (mappings, lists and values; about {} static keys)",
            MAX_NODES / 4
        ),
        E::Budget { breach, .. } => format!(
            "the file is beyond a reading limit: {}",
            clean(&format!("{breach:?}"))
        ),
        other => format!(
            "the file's aliases are beyond a reading limit: {}",
            clean(&without_quoted(
                &serde_saphyr::DefaultMessageFormatter.format_message(other)
            ))
        ),
    }
}

/// One line, quotes instead of backticks.
fn clean(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| match c {
            '`' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn unknown_field(field: &str, expected: &[&str]) -> String {
    unknown("field", field, expected)
}

/// `unknown field 'brust' (did you mean 'burst'?)`: the name the author
/// wrote is quoted only when it is that close to a known one; anything
/// else (say, the first line of a token file given as `--config`) is not
/// repeated: the line and column point at it.
fn unknown(what: &str, written: &str, expected: &[&str]) -> String {
    let near = expected
        .iter()
        .map(|e| (edit_distance(written, e), *e))
        .filter(|(d, e)| *d <= 2 && *d < e.len())
        .min_by_key(|(d, _)| *d);
    match near {
        Some((_, e)) => format!("unknown {what} {} (did you mean '{e}'?)", quoted(written)),
        None if expected.is_empty() => format!("unknown {what}"),
        None => format!("unknown {what} (expected one of: {})", expected.join(", ")),
    }
}

/// What serde found, without the value: `string "s3cr3t"` → `string`,
/// ``integer `5` `` → `integer`, `sequence` → `sequence`.
fn kind_of(unexpected: &str) -> String {
    let kind = clean(unexpected.split(['"', '`', '\'']).next().unwrap_or(""));
    if kind.is_empty() {
        "another value".to_owned()
    } else {
        kind
    }
}

/// `msg` without what it quotes, except a lone punctuation character (a
/// bracket, a colon): the parser's messages may carry pieces of the input.
/// A quote opens only at the start, after a space or `(`/`:`, so the
/// apostrophe in "wasn't" is text.
fn without_quoted(msg: &str) -> String {
    const QUOTES: [char; 3] = ['\'', '`', '"'];
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(q) = rest.find(QUOTES) {
        // Quotes are ASCII: one byte each.
        let (before, quote) = (&rest[..q], &rest[q..=q]);
        out.push_str(before);
        let prev = before
            .chars()
            .next_back()
            .or_else(|| out.chars().next_back());
        if !prev.is_none_or(|p| p.is_whitespace() || matches!(p, '(' | ':')) {
            out.push_str(quote);
            rest = &rest[q + 1..];
            continue;
        }
        // What is quoted is at least one character, itself maybe a quote
        // (`unexpected character: `'' in the parser's style).
        let inner = &rest[q + 1..];
        let first = inner.chars().next().map_or(0, char::len_utf8);
        let close = inner[first..].find(QUOTES).map(|c| c + first);
        let mut chars = close.map_or(inner, |c| &inner[..c]).chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if c.is_ascii_punctuation() => out.push_str(&format!("'{c}'")),
            _ => out.push_str("(input not shown)"),
        }
        rest = close.map_or("", |c| &inner[c + 1..]);
    }
    out.push_str(rest);
    out
}

/// Optimal-string-alignment distance: edits, counting a swap of two
/// neighbours as one (`brust` → `burst` is 1).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

fn segments(path: &serde_path_to_error::Path) -> Vec<Seg> {
    path.iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Seg::key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Seg::key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

/// `plans.free.limits[1].per`; the key under top-level `keys` prints as
/// `<key>` so API keys never reach messages.
pub(crate) fn render_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    let under_keys = matches!(segs.first(), Some(Seg::Key { name, .. }) if name == "keys");
    for (i, seg) in segs.iter().enumerate() {
        match seg {
            Seg::Key { name, .. } => {
                if i > 0 {
                    out.push('.');
                }
                if i == 1 && under_keys {
                    out.push_str("<key>");
                } else {
                    out.push_str(&clean(name));
                }
            }
            Seg::Index(n) => {
                out.push('[');
                out.push_str(&n.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// Locates a validation [`Issue`] in `text` and renders it.
pub(crate) fn locate(text: &str, origin: &str, issue: Issue) -> ConfigError {
    locate_in(Positions::of(text).tree(), origin, issue)
}

/// [`locate`] in a tree of positions already read (`None`: unknown).
fn locate_in(tree: Option<&Spanned<Node>>, origin: &str, issue: Issue) -> ConfigError {
    let find = |path: &[Seg], at_key: bool| tree.and_then(|t| find(t, path, at_key));
    let location = find(&issue.path, issue.at_key);
    let mut reason = issue.reason;
    if let Some(first) = issue.first.as_deref().and_then(|p| find(p, issue.at_key)) {
        reason.push_str(&format!(" (first defined at line {})", first.line()));
    }
    ConfigError::Invalid(Box::new(Diagnostic {
        origin: origin.to_owned(),
        line: location.map(|l| l.line()),
        column: location.map(|l| l.column()),
        path: render_path(&issue.path),
        reason,
    }))
}

/// Locates each of `issues` (at least one) in `text`; at most
/// [`recover::MAX_REPORTED`] are rendered.
pub(crate) fn locate_all(text: &str, origin: &str, issues: Vec<Issue>) -> ConfigError {
    let stopped = issues.len() > recover::MAX_REPORTED;
    // One reading of the positions for every issue.
    let positions = Positions::of(text);
    let errors = issues
        .into_iter()
        .take(recover::MAX_REPORTED)
        .map(|issue| locate_in(positions.tree(), origin, issue))
        .collect();
    ConfigError::gather(errors, stopped)
}

/// A text and its tree of positions, read at most once, when first
/// needed (a missing field or a validation issue to place).
struct Positions<'t> {
    text: &'t str,
    tree: std::cell::OnceCell<Option<Spanned<Node>>>,
}

impl<'t> Positions<'t> {
    fn of(text: &'t str) -> Self {
        Self {
            text,
            tree: std::cell::OnceCell::new(),
        }
    }

    /// The tree; `None` if the text does not parse.
    fn tree(&self) -> Option<&Spanned<Node>> {
        self.tree
            .get_or_init(|| {
                serde_saphyr::with_deserializer_from_str_with_options(self.text, options(), |de| {
                    Spanned::<Node>::deserialize(de)
                })
                .ok()
            })
            .as_ref()
    }
}

/// The document's shape with the position of every key and value, read
/// only to locate validation issues.
enum Node {
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

/// The position of `path`: of its value, or of its last key when
/// `at_key`. A path that leaves the document stops at the deepest node
/// it reached (a missing field points at its parent).
fn find(root: &Spanned<Node>, path: &[Seg], at_key: bool) -> Option<Location> {
    let mut node = root;
    let mut loc = root.referenced;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let next = match (seg, &node.value) {
            (Seg::Key { name, nth }, Node::Map(entries)) => entries
                .iter()
                .filter(|(k, _)| k.value == *name)
                .nth(*nth)
                .map(|(k, v)| {
                    (
                        if at_key && last {
                            k.referenced
                        } else {
                            v.referenced
                        },
                        v,
                    )
                }),
            (Seg::Index(n), Node::Seq(items)) => items.get(*n).map(|v| (v.referenced, v)),
            _ => None,
        };
        match next {
            Some((l, v)) => {
                loc = l;
                node = v;
            }
            None => break,
        }
    }
    (loc != Location::UNKNOWN && loc.line() > 0).then_some(loc)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;

        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any yaml node")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = map.next_key()? {
                    entries.push((k, map.next_value()?));
                }
                Ok(Node::Map(entries))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element()? {
                    items.push(v);
                }
                Ok(Node::Seq(items))
            }

            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u128<E>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
        }

        d.deserialize_any(NodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_messages_lose_what_they_quote_but_a_punctuation_mark() {
        for (msg, want) in [
            ("unclosed bracket '['", "unclosed bracket '['"),
            ("unexpected character: `@'", "unexpected character: '@'"),
            ("unexpected character: ``'", "unexpected character: '`'"),
            (
                "non-finite float `s3cr3t` rejected",
                "non-finite float (input not shown) rejected",
            ),
            (
                "failed to resolve include \"s3cr3t\"",
                "failed to resolve include (input not shown)",
            ),
            ("the handle wasn't declared", "the handle wasn't declared"),
            ("tag 's3cr3t", "tag (input not shown)"),
            (
                "a (\"s3cr3t\") b: 'x y' c",
                "a ((input not shown)) b: (input not shown) c",
            ),
        ] {
            assert_eq!(without_quoted(msg), want, "{msg:?}");
        }
    }

    #[test]
    fn a_type_mismatch_names_the_kind_found_never_the_value() {
        for (unexpected, want) in [
            ("string \"s3cr3t\"", "string"),
            ("integer `12345`", "integer"),
            ("floating point `1.5`", "floating point"),
            ("sequence", "sequence"),
            ("`s3cr3t`", "another value"),
        ] {
            assert_eq!(kind_of(unexpected), want);
        }
    }

    #[test]
    fn an_unknown_name_is_quoted_only_when_it_is_close_to_a_known_one() {
        let known = ["burst", "rate"];
        assert_eq!(
            unknown_field("brust", &known),
            "unknown field 'brust' (did you mean 'burst'?)"
        );
        assert_eq!(
            unknown_field("s3cr3t-token-value", &known),
            "unknown field (expected one of: burst, rate)"
        );
        assert_eq!(unknown_field("s3cr3t", &[]), "unknown field");
    }
}
