//! What the binaries (`quotad`, `quotactl`, `quotad-bench`) share on
//! their command lines: arguments parsed with clap, usage errors exiting
//! 64 (EX_USAGE from sysexits.h), errors printed with each cause once,
//! and a gRPC client's endpoint from its flags ([`endpoint`]).

pub mod endpoint;

use std::error::Error;
use std::process::ExitCode;

/// EX_USAGE: the command or its config was wrong.
pub const EX_USAGE: u8 = 64;

/// The command line as `T`, or the exit to take: `--help` and
/// `--version` print and exit 0; a bad argument prints why and exits 64.
pub fn parse<T: clap::Parser>() -> Result<T, ExitCode> {
    parse_with_matches().map(|(t, _)| t)
}

/// [`parse`], also returning clap's matches, which say where each value
/// came from (the command line, the environment or a default).
pub fn parse_with_matches<T: clap::Parser>() -> Result<(T, clap::ArgMatches), ExitCode> {
    let exit = |e: clap::Error| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(EX_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    };
    let matches = T::command().try_get_matches().map_err(exit)?;
    let parsed = T::from_arg_matches(&matches).map_err(exit)?;
    Ok((parsed, matches))
}

/// [`parse`], with a usage error said by `say` (its text as clap renders
/// it, and the exit code 64) instead of printed; `--help` and
/// `--version` still print and exit 0.
pub fn parse_with<T: clap::Parser>(say: impl Fn(&str, u8)) -> Result<T, ExitCode> {
    let exit = |e: clap::Error| {
        if e.use_stderr() {
            say(&e.render().to_string(), EX_USAGE);
            ExitCode::from(EX_USAGE)
        } else {
            let _ = e.print();
            ExitCode::SUCCESS
        }
    };
    let matches = T::command().try_get_matches().map_err(exit)?;
    T::from_arg_matches(&matches).map_err(exit)
}

/// `error` and its causes, `: `-separated, each once (see [`chain`]).
pub fn error_text(error: &(dyn Error + 'static)) -> String {
    chain(error.to_string(), error.source())
}

/// `text`, then each cause from `source` on after `: `, skipping a cause
/// whose text is already there: many errors print their source in their
/// own message and return it as their source too, which would read
/// `Address already in use: Address already in use`.
pub fn chain(mut text: String, mut source: Option<&(dyn Error + 'static)>) -> String {
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// Writes `line` and a line break to standard output. A reader that has
/// gone (`quotad check-config … | head -1`) is not an error: the rest is
/// not wanted. (`println!` would panic on the closed pipe.)
pub fn out(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot bind 127.0.0.1:1: {source}")]
    struct Bind {
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the listener")]
    struct Outer {
        #[source]
        source: Bind,
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e = Bind { source: io() };
        assert_eq!(
            error_text(&e),
            "cannot bind 127.0.0.1:1: Address already in use"
        );
        let e = Outer {
            source: Bind { source: io() },
        };
        assert_eq!(
            error_text(&e),
            "the listener: cannot bind 127.0.0.1:1: Address already in use"
        );
        let e = anyhow::Error::new(Bind { source: io() }).context("serve");
        assert_eq!(
            error_text(e.as_ref()),
            "serve: cannot bind 127.0.0.1:1: Address already in use"
        );
    }
}
