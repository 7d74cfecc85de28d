//! Logs: `tracing` to standard output, human-readable by default or one
//! JSON object per line (`--log-format json`) for log collectors.
//!
//! What is logged never holds a raw API key: code that names a key logs
//! its 16-hex keyed hash (`key_hash`), as metrics and `quotactl` do.
//! Refused calls are logged at debug level with the request id the caller
//! got back (`x-request-id`), so one refusal can be found among many.

use std::str::FromStr;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// For people: a line per event, colours on a terminal.
    #[default]
    Text,
    /// For collectors: one JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format '{other}' (expected text or json)"
            )),
        }
    }
}

/// Starts logging with `filter` (tracing `EnvFilter` syntax, already
/// checked; `info` if not) in `format`. Call once.
pub fn init(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => {
            // Colours only for a terminal: logs piped to files or
            // collectors stay plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            builder.with_ansi(ansi).init()
        }
    }
}
