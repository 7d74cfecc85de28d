//! What the binaries (`quotad`, `quotactl`, `quotad-bench`) share on
//! their command lines: arguments parsed with clap, and usage errors
//! exiting 64 (EX_USAGE from sysexits.h).

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
