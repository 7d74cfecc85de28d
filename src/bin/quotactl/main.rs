//! `quotactl`: the operator's CLI for a quotad admin listener.
//!
//! ```text
//! quotactl override set KEY --plan gold --expires 30d --reason "ticket 42"
//! quotactl override get KEY | rm KEY | ls [--plan P] [--blocked] [--all]
//! quotactl usage KEY
//! quotactl reset KEY
//! quotactl plans
//! quotactl reload
//! quotactl check-config FILE [--limits FILE]...
//! quotactl token new [--id ID] [--scopes read,write]
//! ```
//!
//! The server comes from `--server` or `QUOTACTL_SERVER` (default
//! `http://127.0.0.1:8082`; `https://` for TLS, with `--ca-file` and, for
//! mTLS, `--cert-file`/`--key-file`; `http://` beyond loopback only with
//! `--insecure`). The admin token comes from
//! `QUOTACTL_TOKEN` or `--token-file`, never from an argument (arguments
//! show in `ps` and shell history). A KEY is the API key itself (`-` reads
//! it from stdin, keeping it out of `ps` too), or `--hash HEX` names it by
//! the hash listings and logs show. Output is a table, or JSON with
//! `-o json`; exit codes are listed in [`client::exit`].
#![forbid(unsafe_code)]
#![warn(clippy::too_many_lines)]

mod client;
mod output;
mod tls_hint;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use quotad::api::pb;
use quotad::config::{Config, ConfigError};
use serde_json::json;

use client::{Client, Failure, Target, exit};
use output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "quotactl",
    version,
    about = "Operate a quotad: overrides, usage, plans, reloads",
    after_help = "The admin token comes from QUOTACTL_TOKEN or --token-file, never an argument.\n\
Exit codes: 0 ok, 1 not found, 64 usage or an invalid config file, 65 input the server\n\
refused, 66 unreadable file, 69 server unavailable, 70 server error, 77 not authenticated\n\
or not allowed. With -o json, an error is a JSON object on stderr."
)]
struct Cli {
    /// The admin listener: http://host:port, or https://host:port for TLS
    /// [env: QUOTACTL_SERVER] [default: http://127.0.0.1:8082].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "URL"
    )]
    server: Option<String>,
    /// A file whose first line is the admin token (else QUOTACTL_TOKEN)
    /// [env: QUOTACTL_TOKEN_FILE].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    token_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) to trust for an https:// server, instead of
    /// the system's [env: QUOTACTL_CA_FILE].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a server requiring mTLS [env:
    /// QUOTACTL_CERT_FILE].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM) [env: QUOTACTL_KEY_FILE].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the
    /// host in --server.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "NAME"
    )]
    tls_server_name: Option<String>,
    /// Output: table (for people) or json (for scripts).
    #[arg(
        short = 'o',
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        default_value = "table"
    )]
    output: Format,
    /// Send the admin token over http:// to a host that is not loopback
    /// (refused otherwise): only when the link is encrypted by other
    /// means, such as a VPN, a service mesh or an SSH tunnel.
    #[arg(long, global = true, help_heading = "Global options")]
    insecure: bool,
    /// How long to wait for the server.
    #[arg(long, global = true, help_heading = "Global options", default_value = "10s", value_parser = parse_timeout)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Give keys another plan, limits of their own, or a block.
    #[command(subcommand)]
    Override(OverrideCmd),
    /// Where a key stands against every limit of its plan.
    Usage(KeyArg),
    /// Forget what a key has spent (on every node, with Redis).
    Reset(KeyArg),
    /// The config's plans and their limits.
    Plans,
    /// Make the server read its config and limits files again.
    Reload,
    /// Validate a config file (and envoyproxy/ratelimit limits files)
    /// here, without a server; exit 64 if invalid, as `quotad
    /// check-config` does.
    CheckConfig {
        /// The YAML config file.
        file: PathBuf,
        /// An envoyproxy/ratelimit limits file or directory; repeatable.
        #[arg(long = "limits", value_name = "FILE")]
        limits: Vec<PathBuf>,
    },
    /// Admin tokens.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Debug, Subcommand)]
enum OverrideCmd {
    /// Set (or replace) a key's override.
    Set(SetArgs),
    /// Show a key's override (exit 1 if it has none).
    Get(KeyArg),
    /// Remove a key's override (exit 1 if it had none).
    #[command(alias = "delete")]
    Rm(KeyArg),
    /// List overrides in force.
    Ls(LsArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Make a new random token and print it with the config line that
    /// admits it (its SHA-256; the config holds no secret).
    New {
        /// The token's id (who holds it, for the audit log).
        #[arg(long, default_value = "ops")]
        id: String,
        /// Its scopes: read, write or read,write.
        #[arg(long, default_value = "read,write")]
        scopes: String,
    },
}

#[derive(Debug, Args)]
struct KeyArg {
    /// The API key; `-` reads it from stdin.
    #[arg(required_unless_present = "hash", conflicts_with = "hash")]
    key: Option<String>,
    /// Name the key by its hash (16 hex digits, from listings and logs).
    #[arg(long, value_name = "HEX")]
    hash: Option<String>,
}

#[derive(Debug, Args)]
struct SetArgs {
    #[command(flatten)]
    key: KeyArg,
    /// Give the key this plan of the config.
    #[arg(long, group = "target")]
    plan: Option<String>,
    /// Give the key a limit of its own (repeatable), as in a config file:
    /// name=per-second,rate=100,per=second,burst=200 or
    /// name=daily,quota=5000,per=day (add mode=strict to decide it in
    /// Redis) or name=streams,concurrency=10,lease_ttl=30s (slots held
    /// at once).
    #[arg(long = "limit", value_name = "SPEC", group = "target")]
    limits: Vec<String>,
    /// Deny every check (and new acquire) of the key. Leases it holds
    /// keep running until released or expired: `quotactl reset` frees them.
    #[arg(long, group = "target")]
    block: bool,
    /// When it ends: a duration from now (30d, 12h, 90m) or a time
    /// (2027-01-01T00:00:00Z). Default: until deleted.
    #[arg(long, value_name = "WHEN")]
    expires: Option<String>,
    /// Why (kept with the override and in the audit log).
    #[arg(long, required = true)]
    reason: String,
}

#[derive(Debug, Args)]
struct LsArgs {
    /// Only overrides giving this plan (`override` for own limits).
    #[arg(long)]
    plan: Option<String>,
    /// Only blocks.
    #[arg(long)]
    blocked: bool,
    /// Overrides per page.
    #[arg(long, default_value_t = 100)]
    page_size: u32,
    /// Start after this page token (from a previous page).
    #[arg(long, value_name = "TOKEN")]
    page_token: Option<String>,
    /// Every page, not just the first.
    #[arg(long)]
    all: bool,
}

/// A duration as the admin API takes it (seconds saturating).
fn wire_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (for example 5s or 500ms)"))
}

fn main() -> ExitCode {
    let json_errors = wants_json(std::env::args());
    let cli = match quotad::cli::parse_with::<Cli>(|message, code| {
        if json_errors {
            report(
                &Failure::new(code, message.trim_start_matches("error: ").trim_end()),
                true,
            );
        } else {
            eprint!("{message}");
        }
    }) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let json_errors = cli.output == Format::Json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(out) => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                // The reader went away (`quotactl override ls | head`):
                // what it wanted it got.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the output: {e}");
                    ExitCode::from(exit::SOFTWARE)
                }
            }
        }
        Err(f) => {
            report(&f, json_errors);
            ExitCode::from(f.code)
        }
    }
}

/// Where `--server` points when neither it nor `QUOTACTL_SERVER` is given.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8082";

/// Environment variable `name`, when set and not empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Environment variable `name` as a path, when set and not empty.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Whether the command line asks for JSON output (read before parsing,
/// so a usage error can be JSON too).
fn wants_json(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.iter().enumerate().any(|(i, a)| {
        matches!(a.as_str(), "-ojson" | "--output=json")
            || (matches!(a.as_str(), "-o" | "--output")
                && args.get(i + 1).map(String::as_str) == Some("json"))
    })
}

/// Says `f` on stderr: `error: …`, or with `-o json` one JSON object,
/// `{"error": {"code": 69, "message": "…"}}` (and its details: an invalid
/// config's `"errors": [{"file", "line", "column", "path", "reason"}]`).
fn report(f: &Failure, json: bool) {
    if json {
        let mut error = json!({ "code": f.code, "message": f.message });
        if let (Some((name, value)), Some(fields)) = (&f.details, error.as_object_mut()) {
            fields.insert((*name).to_owned(), value.clone());
        }
        eprintln!("{}", json!({ "error": error }));
    } else {
        eprintln!("error: {}", f.message);
    }
}

/// Runs the command; returns what to print.
async fn run(cli: Cli) -> Result<String, Failure> {
    let target = Target {
        // From the environment here rather than through clap, which
        // would show a set variable's flag in every usage line as if it
        // were required.
        server: cli
            .server
            .clone()
            .or_else(|| env("QUOTACTL_SERVER"))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
        token_file: cli
            .token_file
            .clone()
            .or_else(|| env_path("QUOTACTL_TOKEN_FILE")),
        ca_file: cli.ca_file.clone().or_else(|| env_path("QUOTACTL_CA_FILE")),
        cert_file: cli
            .cert_file
            .clone()
            .or_else(|| env_path("QUOTACTL_CERT_FILE")),
        key_file: cli
            .key_file
            .clone()
            .or_else(|| env_path("QUOTACTL_KEY_FILE")),
        tls_server_name: cli.tls_server_name.clone(),
        timeout: cli.timeout,
        insecure: cli.insecure,
    };
    let json = cli.output == Format::Json;
    let call = call_failed(&target);
    match cli.command {
        Command::CheckConfig { file, limits } => check_config(&file, &limits, json),
        Command::Token(TokenCmd::New { id, scopes }) => new_token(&id, &scopes, json),
        Command::Override(cmd) => override_cmd(cmd, &target, json).await,
        Command::Usage(key) => {
            let key = key_ref(key)?;
            let mut client = client::connect(&target).await?;
            let u = client.get_usage(key).await.map_err(call)?.into_inner();
            Ok(if json {
                doc(output::usage_json(&u))
            } else {
                output::usage_text(&u)
            })
        }
        Command::Reset(key) => {
            let key = key_ref(key)?;
            let mut client = client::connect(&target).await?;
            let r = client.reset_usage(key).await.map_err(call)?.into_inner();
            let usage = r.usage.unwrap_or_default();
            Ok(if json {
                doc(
                    json!({ "key_hash": r.key_hash, "cells": r.cells, "leases": r.leases, "usage": output::usage_json(&usage) }),
                )
            } else {
                let freed = match r.leases {
                    0 => String::new(),
                    1 => "1 lease freed\n".to_owned(),
                    n => format!("{n} leases freed\n"),
                };
                format!(
                    "usage of key {} reset\n{freed}{}",
                    r.key_hash,
                    output::usage_text(&usage)
                )
            })
        }
        Command::Plans => {
            let mut client = client::connect(&target).await?;
            let p = client
                .list_plans(pb::ListPlansRequest {})
                .await
                .map_err(call)?
                .into_inner();
            Ok(if json {
                doc(output::plans_json(&p))
            } else {
                output::plans_text(&p)
            })
        }
        Command::Reload => reload(&target, json).await,
    }
}

/// What a call that failed with a status tells the user about `target`.
fn call_failed(target: &Target) -> impl Fn(tonic::Status) -> Failure + '_ {
    let hint = target.hint();
    move |s: tonic::Status| Failure::status(&s, &target.server, hint)
}

/// `override set|get|rm|ls`.
async fn override_cmd(cmd: OverrideCmd, target: &Target, json: bool) -> Result<String, Failure> {
    let call = call_failed(target);
    match cmd {
        OverrideCmd::Set(args) => {
            let req = set_request(args)?;
            let mut client = client::connect(target).await?;
            let r = client.set_override(req).await.map_err(call)?.into_inner();
            let o = r.r#override.unwrap_or_default();
            Ok(if json {
                doc(json!({
                    "override": output::override_json(&o),
                    "previous": r.previous.as_ref().map(output::override_json),
                }))
            } else {
                let was = r
                    .previous
                    .as_ref()
                    .map_or("none".to_owned(), output::target);
                format!("override set (was: {was})\n{}", output::override_fields(&o))
            })
        }
        OverrideCmd::Get(key) => {
            let key = key_ref(key)?;
            let mut client = client::connect(target).await?;
            let o = client.get_override(key).await.map_err(call)?.into_inner();
            Ok(if json {
                doc(output::override_json(&o))
            } else {
                output::override_fields(&o)
            })
        }
        OverrideCmd::Rm(key) => {
            let key = key_ref(key)?;
            let mut client = client::connect(target).await?;
            let r = client
                .delete_override(key)
                .await
                .map_err(call)?
                .into_inner();
            let o = r.previous.unwrap_or_default();
            Ok(if json {
                doc(json!({ "previous": output::override_json(&o) }))
            } else {
                format!(
                    "override of key {} deleted (was: {})\n",
                    o.key_hash,
                    output::target(&o)
                )
            })
        }
        OverrideCmd::Ls(args) => {
            let mut client = client::connect(target).await?;
            list(&mut client, args, json, &call).await
        }
    }
}

/// `reload`: asks the daemon to reload its config.
async fn reload(target: &Target, json: bool) -> Result<String, Failure> {
    let call = call_failed(target);
    let mut client = client::connect(target).await?;
    let r = client
        .reload(pb::ReloadRequest {})
        .await
        .map_err(call)?
        .into_inner();
    Ok(if json {
        doc(json!({
            "changed": r.changed,
            "restart_needed": r.restart_needed,
            "config": output::version_json(r.config.as_ref()),
        }))
    } else {
        let mut out = if r.changed {
            format!(
                "config reloaded: {}\n",
                output::version_line(r.config.as_ref())
            )
        } else {
            format!(
                "config unchanged: {}\n",
                output::version_line(r.config.as_ref())
            )
        };
        if !r.restart_needed.is_empty() {
            out.push_str(&format!(
                "changed but applied only on restart: {}\n",
                r.restart_needed.join(", ")
            ));
        }
        out
    })
}

/// Pretty JSON and a newline.
fn doc(v: serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// The key a command names, as the API's `KeyRef`.
fn key_ref(k: KeyArg) -> Result<pb::KeyRef, Failure> {
    let (key, key_hash) = key_parts(k)?;
    Ok(pb::KeyRef { key, key_hash })
}

fn key_parts(k: KeyArg) -> Result<(String, String), Failure> {
    match (k.key, k.hash) {
        (Some(key), None) if key == "-" => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map_err(|e| {
                Failure::new(
                    exit::NO_INPUT,
                    format!("cannot read the key from stdin: {e}"),
                )
            })?;
            let key = line.trim_end_matches(['\r', '\n']).to_owned();
            if key.is_empty() {
                return Err(Failure::usage("KEY -: stdin held no key"));
            }
            Ok((key, String::new()))
        }
        (Some(key), None) => Ok((key, String::new())),
        (None, Some(hash)) => Ok((String::new(), hash)),
        _ => Err(Failure::usage("give KEY or --hash HEX")),
    }
}

fn set_request(args: SetArgs) -> Result<pb::SetOverrideRequest, Failure> {
    use pb::set_override_request::Target as T;
    let target = if let Some(plan) = args.plan {
        T::Plan(plan)
    } else if args.block {
        T::Block(true)
    } else if !args.limits.is_empty() {
        let limits = args
            .limits
            .iter()
            .map(|s| limit_spec(s))
            .collect::<Result<Vec<_>, _>>()?;
        T::Limits(pb::LimitList { limits })
    } else {
        return Err(Failure::usage(
            "give one of --plan PLAN, --limit SPEC or --block",
        ));
    };
    let (mut expires_at, mut ttl) = (None, None);
    if let Some(when) = &args.expires {
        match humantime::parse_duration(when) {
            Ok(d) => ttl = Some(wire_duration(d)),
            Err(_) => {
                let t = quotad::core::clock::parse_rfc3339(when).map_err(|_| {
                    Failure::usage(format!(
                        "--expires '{when}': expected a duration (30d, 12h, 90m) or a UTC time (2027-01-01T00:00:00Z)"
                    ))
                })?;
                expires_at = Some(prost_types::Timestamp {
                    seconds: (t / 1_000_000_000) as i64,
                    nanos: (t % 1_000_000_000) as i32,
                });
            }
        }
    }
    let (key, key_hash) = key_parts(args.key)?;
    Ok(pb::SetOverrideRequest {
        key,
        key_hash,
        target: Some(target),
        expires_at,
        ttl,
        reason: args.reason,
    })
}

/// `name=per-second,rate=100,per=second,burst=200` (or
/// `name=streams,concurrency=10,lease_ttl=30s`) → a limit.
fn limit_spec(text: &str) -> Result<pb::LimitSpec, Failure> {
    let bad = |why: String| Failure::usage(format!("--limit '{text}': {why}"));
    let mut spec = pb::LimitSpec::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("'{part}' is not field=value")))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{k}: expected a whole number, got '{v}'")))
        };
        match k.trim() {
            "name" => spec.name = v.to_owned(),
            "rate" => spec.rate = number(v)?,
            "quota" => spec.quota = number(v)?,
            "per" => spec.per = v.to_owned(),
            "burst" => spec.burst = number(v)?,
            "concurrency" => spec.concurrency = number(v)?,
            "lease_ttl" => {
                let d = humantime::parse_duration(v)
                    .map_err(|e| bad(format!("lease_ttl: {e} (for example 30s or 5m)")))?;
                spec.lease_ttl = Some(wire_duration(d));
            }
            "mode" => {
                spec.strict = match v {
                    "strict" => true,
                    "sync" => false,
                    _ => return Err(bad(format!("mode: expected sync or strict, got '{v}'"))),
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown field '{other}' (expected name, rate, quota, per, burst, mode, concurrency, lease_ttl)"
                )));
            }
        }
    }
    if spec.name.is_empty() {
        return Err(bad("missing name=".to_owned()));
    }
    Ok(spec)
}

async fn list(
    client: &mut Client,
    args: LsArgs,
    json: bool,
    call: &impl Fn(tonic::Status) -> Failure,
) -> Result<String, Failure> {
    let mut all = Vec::new();
    let mut token = args.page_token.unwrap_or_default();
    let (next, total) = loop {
        let page = client
            .list_overrides(pb::ListOverridesRequest {
                plan: args.plan.clone().unwrap_or_default(),
                blocked: args.blocked,
                page_size: args.page_size,
                page_token: token.clone(),
            })
            .await
            .map_err(call)?
            .into_inner();
        all.extend(page.overrides);
        if !args.all || page.next_page_token.is_empty() {
            break (page.next_page_token, page.total);
        }
        token = page.next_page_token;
    };
    Ok(if json {
        doc(json!({
            "overrides": all.iter().map(output::override_json).collect::<Vec<_>>(),
            "next_page_token": if next.is_empty() { serde_json::Value::Null } else { json!(next) },
            "total": total,
        }))
    } else {
        let mut out = output::overrides_table(&all);
        out.push_str(&format!("{} shown, {total} in force", all.len()));
        if !next.is_empty() {
            out.push_str(&format!("; more with --page-token {next} (or --all)"));
        }
        out.push('\n');
        out
    })
}

fn check_config(file: &std::path::Path, limits: &[PathBuf], json: bool) -> Result<String, Failure> {
    // As `quotad check-config`: the hash secret may come from outside the
    // file (a config with Redis needs one).
    let env = std::env::var("QUOTAD_HASH_SECRET").ok();
    let file_secret = std::env::var_os("QUOTAD_HASH_SECRET_FILE").map(PathBuf::from);
    let secret = quotad::config::outside_hash_secret(env.as_deref(), file_secret.as_deref())
        .map_err(Failure::usage)?;
    let loaded = Config::load_with(file, secret, limits);
    match loaded {
        Ok(c) => Ok(if json {
            doc(
                json!({ "file": file.display().to_string(), "valid": true, "summary": c.summary() }),
            )
        } else {
            format!("{}: ok\n{}\n", file.display(), c.summary())
        }),
        // A file named here that cannot be read is not an invalid one.
        Err(e @ ConfigError::Read { .. }) => Err(Failure::new(exit::NO_INPUT, e.to_string())),
        // As `quotad check-config`: 64, the config was wrong; each
        // mistake located, for scripts.
        Err(e) => {
            let errors: Vec<serde_json::Value> = e
                .diagnostics()
                .into_iter()
                .map(|d| {
                    json!({
                        "file": d.origin,
                        "line": d.line,
                        "column": d.column,
                        "path": d.path,
                        "reason": d.reason,
                    })
                })
                .collect();
            Err(Failure::usage(e.to_string()).with_detail("errors", json!(errors)))
        }
    }
}

fn new_token(id: &str, scopes: &str, json: bool) -> Result<String, Failure> {
    quotad::limits::file::check_name(id).map_err(|e| Failure::usage(format!("--id: {e}")))?;
    let scopes: Vec<&str> = scopes
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if scopes.is_empty() || scopes.iter().any(|s| !matches!(*s, "read" | "write")) {
        return Err(Failure::usage(
            "--scopes: expected read, write or read,write",
        ));
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = std::iter::once("qd_".to_owned())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    let hash = quotad::admin::auth::token_hash(&token);
    let line = format!(
        "- {{ id: {id}, sha256: \"{hash}\", scopes: [{}] }}",
        scopes.join(", ")
    );
    Ok(if json {
        doc(json!({ "id": id, "token": token, "sha256": hash, "scopes": scopes, "config": line }))
    } else {
        format!(
            "token (give it to its holder; it is shown only now):\n  {token}\n\nadd to admin.tokens in the config:\n  {line}\n"
        )
    })
}
