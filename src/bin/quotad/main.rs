//! The `quotad` daemon: `quotad serve`, `quotad check-config FILE` and
//! `quotad probe` (is a running one ready and answering: [`probe`]).
//!
//! Start-up order: parse arguments, load and validate the config (exit 64,
//! EX_USAGE, on any error, before anything binds), start logging, bind,
//! serve until SIGTERM/SIGINT, drain, exit 0. SIGHUP reloads the config
//! (the file, then the flags over it, as at start).
#![forbid(unsafe_code)]
#![warn(clippy::too_many_lines)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use quotad::app::App;
use quotad::config::{Config, HeaderStyle, RedisSettings};
use quotad::telemetry::logging::{self, LogFormat};

use quotad::cli::{EX_USAGE, error_text};

mod probe;

/// jemalloc instead of glibc's malloc: every call allocates its request,
/// its answer and its headers, and glibc's allocator was 8–9 % of the
/// server's time. Measured in `BENCHMARKS.md` ("Lever 1"), with the
/// memory bounds of `conns`, `flood` and `soak` checked against it. The
/// benches' floor server keeps the system allocator (it is the fixed
/// reference).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "quotad",
    version,
    about = "Distributed rate-limiting and quota daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon. Without --config it serves the embedded demo config
    /// (in memory, plans `free` and `gold`).
    Serve(Box<ServeArgs>),
    /// Validate a config file (and envoyproxy/ratelimit limits files) and
    /// print a summary; exit 64 if invalid.
    CheckConfig {
        /// The YAML config file.
        file: PathBuf,
        /// An envoyproxy/ratelimit limits file or directory; repeatable.
        #[arg(long = "limits", value_name = "FILE")]
        limits: Vec<PathBuf>,
        /// A file holding the keyed-hash secret, as for `serve` (or the
        /// QUOTAD_HASH_SECRET environment variable): a config with Redis
        /// and no store.hash_secret checks as it would serve.
        #[arg(long, env = "QUOTAD_HASH_SECRET_FILE", value_name = "FILE")]
        hash_secret_file: Option<PathBuf>,
    },
    /// Check that a running quotad is ready and answers: GET /readyz on
    /// its HTTP listener, gRPC health and one Envoy RLS call (charging
    /// nothing) on its gRPC listener; exit 0, or 69 if a step fails. For
    /// container health checks and `helm test`.
    Probe(probe::ProbeArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// YAML config file (plans, limits, keys, listeners, caps).
    #[arg(long, env = "QUOTAD_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address; overrides server.grpc_addr.
    #[arg(long, env = "QUOTAD_GRPC_ADDR", value_parser = parse_listen_addr)]
    grpc_addr: Option<SocketAddr>,
    /// HTTP (health) listen address; overrides server.http_addr.
    #[arg(long, env = "QUOTAD_HTTP_ADDR", value_parser = parse_listen_addr)]
    http_addr: Option<SocketAddr>,
    /// HTTP check door listen address (forward auth for NGINX, Traefik and
    /// Caddy at /v1/auth; /v1/check, /v1/report and envoyproxy/ratelimit's
    /// /json); sets server.http_check.addr. Off without it.
    #[arg(long, env = "QUOTAD_HTTP_CHECK_ADDR", value_parser = parse_listen_addr)]
    http_check_addr: Option<SocketAddr>,
    /// Admin API listen address; overrides admin.addr (the config needs
    /// an admin section with tokens: the admin API is off without one).
    #[arg(long, env = "QUOTAD_ADMIN_ADDR", value_parser = parse_listen_addr)]
    admin_addr: Option<SocketAddr>,
    /// An envoyproxy/ratelimit limits file (one domain) or a directory of
    /// them; repeatable; added to the config's rls_files.
    #[arg(long = "limits", value_name = "FILE")]
    limits: Vec<PathBuf>,
    /// Redis URL (redis://host:port[/db] or unix:///path): keep limits in
    /// sync with other nodes; sets redis.url (needs a hash secret: store.hash_secret,
    /// QUOTAD_HASH_SECRET or --hash-secret-file).
    /// A password in it shows in process arguments: prefer QUOTAD_REDIS
    /// or --redis-password-file.
    #[arg(long, env = "QUOTAD_REDIS", value_name = "URL")]
    redis: Option<String>,
    /// A file holding the Redis password (trailing line break removed):
    /// overrides a password in the URL, as redis.password_file does;
    /// never printed. Needs Redis (--redis or redis.url).
    #[arg(long, env = "QUOTAD_REDIS_PASSWORD_FILE", value_name = "FILE")]
    redis_password_file: Option<PathBuf>,
    /// A file holding the keyed-hash secret (32 hex digits, as `openssl
    /// rand -hex 16` prints): overrides store.hash_secret; every node of
    /// one Redis needs the same. The secret itself can come from the
    /// QUOTAD_HASH_SECRET environment variable instead (never a flag:
    /// arguments show in `ps`).
    #[arg(long, env = "QUOTAD_HASH_SECRET_FILE", value_name = "FILE")]
    hash_secret_file: Option<PathBuf>,
    /// Global shadow mode: count and report every limit, but answer every
    /// Envoy RLS request OK (sets envoy.shadow).
    #[arg(long, env = "QUOTAD_SHADOW", value_parser = parse_switch)]
    shadow: bool,
    /// Rate-limit headers in answers for domains from envoyproxy/ratelimit
    /// files: `off` (the default, as envoyproxy/ratelimit), `draft03`
    /// (exactly RateLimit-Limit, -Remaining and -Reset, as its
    /// LIMIT_RESPONSE_HEADERS_ENABLED=true), `draft11` or `both`; sets
    /// envoy.response_headers.
    #[arg(
        long,
        env = "QUOTAD_ENVOY_RESPONSE_HEADERS",
        value_name = "STYLE",
        value_parser = parse_header_style
    )]
    envoy_response_headers: Option<HeaderStyle>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `quotad=debug`.
    #[arg(long, env = "QUOTAD_LOG", default_value = "info")]
    log: String,
    /// Log line format: `text` (for people) or `json` (one object per
    /// line, for log collectors).
    #[arg(
        long,
        env = "QUOTAD_LOG_FORMAT",
        default_value = "text",
        value_name = "FORMAT"
    )]
    log_format: LogFormat,
    /// Check the config and these flags as `serve` would read them (files,
    /// TLS certificates, listeners), print a summary and exit: 0 if
    /// `serve` would start with them, 64 if not. Each listener's address
    /// is bound and released at once (a port another process holds fails
    /// the check); nothing is served.
    #[arg(long)]
    check_only: bool,
}

fn main() -> ExitCode {
    // --help and --version are not errors; a bad flag is a usage error
    // like a bad config file.
    let (cli, matches) = match quotad::cli::parse_with_matches::<Cli>() {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    // A password typed after --redis is in every process listing; the
    // same URL from QUOTAD_REDIS is not.
    let password_in_argv = matches
        .subcommand_matches("serve")
        .is_some_and(|m| m.value_source("redis") == Some(clap::parser::ValueSource::CommandLine))
        && matches!(&cli.command, Command::Serve(a) if a.redis.as_deref().is_some_and(has_secret));
    match cli.command {
        Command::Probe(args) => probe::run(&args),
        Command::CheckConfig {
            file,
            limits,
            hash_secret_file,
        } => match hash_secret(hash_secret_file.as_deref())
            .and_then(|secret| Ok(Config::load_with(&file, secret, &limits)?))
        {
            Ok(config) => {
                quotad::cli::out(&format!("{}: ok", file.display()));
                quotad::cli::out(&config.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}", error_text(e.as_ref()));
                ExitCode::from(EX_USAGE)
            }
        },
        Command::Serve(args) => {
            let config = match load(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {}", error_text(e.as_ref()));
                    return ExitCode::from(EX_USAGE);
                }
            };
            if args.check_only {
                if password_in_argv {
                    eprintln!("warning: {ARGV_PASSWORD}");
                }
                let from = config
                    .source
                    .as_ref()
                    .map_or_else(|| "embedded config".to_owned(), |p| p.display().to_string());
                if let Err(e) = try_binds(&config) {
                    eprintln!("error: {e}");
                    return ExitCode::from(EX_USAGE);
                }
                quotad::cli::out(&format!("{from}: ok"));
                quotad::cli::out(&config.summary());
                return ExitCode::SUCCESS;
            }
            logging::init(&args.log, args.log_format);
            if password_in_argv {
                tracing::warn!("{ARGV_PASSWORD}");
            }
            match serve(config, *args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Logging is up: the error goes to the log, once.
                    tracing::error!("{}", error_text(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Binds and releases each listener's address, as `serve` would bind
/// them: the first that fails, named with its address and why. (Two
/// listeners on one address are refused with the config.)
fn try_binds(config: &Config) -> Result<(), String> {
    let boot = &config.boot;
    let mut listeners = vec![
        ("gRPC listener (server.grpc_addr)", boot.server.grpc_addr),
        ("HTTP listener (server.http_addr)", boot.server.http_addr),
    ];
    if let Some(addr) = boot.server.http_check.addr {
        listeners.push(("HTTP check door (server.http_check.addr)", addr));
    }
    if let Some(admin) = &boot.admin {
        listeners.push(("admin listener (admin.addr)", admin.addr));
    }
    for (what, addr) in listeners {
        try_bind(addr).map_err(|e| format!("the {what} cannot bind {addr}: {e}"))?;
    }
    Ok(())
}

/// Binds `addr` and lets it go. `SO_REUSEPORT` lets checks of one config
/// run side by side; a process holding the port as `serve` does (without
/// it) still fails the bind.
fn try_bind(addr: std::net::SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())
}

/// The hash secret from `QUOTAD_HASH_SECRET` or `--hash-secret-file`
/// (not both), when one is given.
/// The hash secret from QUOTAD_HASH_SECRET or `file`
/// (`--hash-secret-file`), not both; `None` without either.
fn hash_secret(file: Option<&std::path::Path>) -> anyhow::Result<Option<[u8; 16]>> {
    let env = std::env::var("QUOTAD_HASH_SECRET").ok();
    quotad::config::outside_hash_secret(env.as_deref(), file).map_err(anyhow::Error::msg)
}

/// An on/off switch as environment variables spell it (the flag alone
/// means on).
fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" => Ok(true),
        "0" | "false" | "no" | "off" | "n" | "" => Ok(false),
        _ => Err("expected 1, true, yes or on (or 0, false, no, off)".to_owned()),
    }
}

/// A listen address: `IP:PORT`, or `HOST:PORT` resolved now (the first
/// IPv4 address the name has, else its first).
fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let expected =
        "expected IP:PORT or HOST:PORT, such as 127.0.0.1:8081, [::1]:8081 or localhost:8081";
    let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(s)
        .map_err(|e| format!("{expected} ('{s}': {e})"))?
        .collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("{expected} ('{s}' resolves to no address)"))
}

/// A header style by name (`off`, `draft03`, `draft11`, `both`).
fn parse_header_style(s: &str) -> Result<HeaderStyle, String> {
    HeaderStyle::ALL
        .into_iter()
        .find(|h| h.as_str() == s)
        .ok_or_else(|| format!("expected off, draft03, draft11 or both (got '{s}')"))
}

/// The warning for a Redis password given on the command line.
const ARGV_PASSWORD: &str = "--redis: the Redis password in this URL is visible in process arguments (ps, /proc) to every user of this machine; pass the URL in QUOTAD_REDIS, or the password in a file with --redis-password-file or redis.password_file";

/// Whether a Redis URL holds something redaction would hide.
fn has_secret(url: &str) -> bool {
    quotad::config::redis_url::redact_url(url) != url
}

fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let secret = hash_secret(args.hash_secret_file.as_deref())?;
    // The --limits files load with the config file: one without plans
    // may have its Envoy domains from them alone.
    let mut config = match &args.config {
        Some(path) => Config::load_with(path, secret, &args.limits)?,
        None => {
            let mut embedded = Config::embedded_default();
            embedded.add_rls_files(&args.limits)?;
            embedded
        }
    };
    if let Some(addr) = args.grpc_addr {
        config.boot.server.grpc_addr = addr;
    }
    if let Some(addr) = args.http_addr {
        config.boot.server.http_addr = addr;
    }
    if let Some(addr) = args.http_check_addr {
        config.boot.server.http_check.addr = Some(addr);
    }
    if let Some(addr) = args.admin_addr {
        let admin = config.boot.admin.as_mut().ok_or_else(|| {
            anyhow::anyhow!(
                "--admin-addr: the admin API needs an admin section with tokens in the config (see `quotactl token new`)"
            )
        })?;
        admin.addr = addr;
    }
    if args.shadow {
        config.live.envoy.shadow = true;
    }
    if let Some(style) = args.envoy_response_headers {
        config.live.envoy.response_headers = style;
    }
    if let Some(secret) = secret {
        config.boot.store.hash_secret = Some(secret);
    }
    if let Some(url) = &args.redis {
        RedisSettings::check_url(url).map_err(|why| anyhow::anyhow!("--redis: {why}"))?;
        anyhow::ensure!(
            config.boot.store.hash_secret.is_some(),
            "--redis: Redis sync needs a hash secret every node shares, to name a key's Redis entries alike: set QUOTAD_HASH_SECRET, --hash-secret-file FILE or store.hash_secret to 32 hex digits (make one with `openssl rand -hex 16`)"
        );
        let mut settings = config
            .boot
            .redis
            .take()
            .unwrap_or_else(|| RedisSettings::new(url.as_str()));
        settings.url = url.clone();
        config.boot.redis = Some(settings);
    }
    if let Some(path) = &args.redis_password_file {
        let settings = config.boot.redis.as_mut().ok_or_else(|| {
            anyhow::anyhow!(
                "--redis-password-file: there is no Redis to use it for (give --redis or redis.url)"
            )
        })?;
        let password = quotad::config::read_password_file(path)
            .map_err(|why| anyhow::anyhow!("--redis-password-file: {why}"))?;
        settings.password = Some(password);
    }
    config.check_listeners().map_err(anyhow::Error::msg)?;
    tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("--log: invalid filter '{}'", args.log))?;
    Ok(config)
}

fn serve(config: Config, args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        // Listen for signals before binding, so a SIGTERM during start-up
        // is a clean stop rather than the default kill. Two independent
        // listeners: the first signal starts the drain; the other listener
        // sees that one too, and a second signal ends the wait.
        let mut first = Signals::new()?;
        let mut again = Signals::new()?;
        let hangups = {
            use tokio::signal::unix::{SignalKind, signal};
            let hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
            futures_util::stream::unfold(hup, |mut hup| async move {
                hup.recv().await.map(|()| ((), hup))
            })
        };
        match &config.source {
            Some(p) => tracing::info!(config = %p.display(), "config loaded"),
            None => tracing::info!("no --config: serving the embedded demo config (in memory)"),
        }
        // A reload reads the files again and replays the flags over them,
        // as at start.
        let loader = Arc::new(move || load(&args).map_err(|e| error_text(e.as_ref())));
        let app = App::bind(config)
            .await?
            .with_loader(loader)
            .reload_on(hangups);
        let stop = async move {
            let name = first.recv().await;
            tracing::info!("{name} received; a second signal exits without waiting");
        };
        tokio::select! {
            done = app.run(stop) => done?,
            name = async {
                again.recv().await;
                again.recv().await
            } => {
                tracing::warn!("second signal ({name}): exiting before the drain finished");
                anyhow::bail!("stopped by a second {name} before in-flight calls finished");
            }
        }
        Ok(())
    });
    // A read of the config files stuck on a hung mount is on a blocking
    // thread nothing can interrupt; dropping the runtime would wait for it
    // forever. The drain is over: exit without it.
    runtime.shutdown_timeout(BLOCKING_GRACE);
    served
}

/// How long the exit waits for blocking threads still running once the
/// drain is over (a reload's read of the files, given up on).
const BLOCKING_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// SIGTERM and SIGINT listeners, registered when created.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    /// The next SIGTERM or SIGINT; returns its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
