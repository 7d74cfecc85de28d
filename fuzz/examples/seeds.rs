//! Writes the committed seed corpora, `fuzz/corpus/<target>/`: the config
//! and limits files of `tests/fixtures` and `examples` as they are, and
//! hand-made protobuf encodings of native and Envoy RLS requests.
//!
//! Run from `fuzz/` with `cargo run --example seeds` after changing a
//! fixture or the requests below; it rewrites only its own seed files
//! (`seed-*`), so what the fuzzer added to a corpus stays.

use std::fs;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::UInt64Value;
use prost::Message;
use quotad::api::pb::{CheckBatchRequest, CheckRequest};
use quotad_fuzz::{NativeCall, stream_input};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.parent().ok_or("fuzz/ has a parent")?;
    let corpus = fuzz.join("corpus");

    let mut config = files(&repo.join("tests/fixtures/config"))?;
    config.push(repo.join("examples/quotad.yaml"));
    config.push(repo.join("examples/envoy/quotad.yaml"));
    let texts: Vec<(String, Vec<u8>)> = config
        .iter()
        .map(|p| Ok((stem(p), fs::read(p)?)))
        .chain([Ok(("fuzz-native".into(), quotad_fuzz::CONFIG.into()))])
        .collect::<Result<_>>()?;
    write(&corpus.join("config_yaml"), &texts)?;

    let mut rls = files(&repo.join("tests/fixtures/rls/valid"))?;
    rls.extend(files(&repo.join("tests/fixtures/rls/invalid"))?);
    rls.push(repo.join("examples/envoy/limits/edge.yaml"));
    let texts: Vec<(String, Vec<u8>)> = rls
        .iter()
        .map(|p| Ok((stem(p), fs::read(p)?)))
        .chain([Ok(("fuzz-tb".into(), quotad_fuzz::TB_LIMITS.into()))])
        .collect::<Result<_>>()?;
    write(&corpus.join("rls_file"), &texts)?;

    write(&corpus.join("native_api"), &native())?;
    write(&corpus.join("envoy_rls"), &envoy())?;
    Ok(())
}

/// The `.yaml` files in `dir`, by name.
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| Ok(e?.path()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    out.sort();
    Ok(out)
}

fn stem(p: &Path) -> String {
    let parent = p
        .parent()
        .and_then(|d| d.file_name())
        .map_or(String::new(), |d| d.to_string_lossy().into_owned());
    let name = p
        .file_stem()
        .map_or(String::new(), |s| s.to_string_lossy().into_owned());
    format!("{parent}-{name}")
}

/// Replaces the `seed-*` files of `dir` with `seeds`.
fn write(dir: &Path, seeds: &[(String, Vec<u8>)]) -> Result<()> {
    fs::create_dir_all(dir)?;
    for e in fs::read_dir(dir)? {
        let path = e?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        {
            fs::remove_file(path)?;
        }
    }
    for (name, bytes) in seeds {
        fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
    Ok(())
}

fn check(key: &str, cost: u64, id: u64) -> CheckRequest {
    CheckRequest {
        key: key.into(),
        cost,
        id,
    }
}

fn with_kind(kind: NativeCall, message: &impl Message) -> Vec<u8> {
    let mut out = vec![kind as u8];
    out.extend(message.encode_to_vec());
    out
}

fn native() -> Vec<(String, Vec<u8>)> {
    let c = |k, cost, id| with_kind(NativeCall::Check, &check(k, cost, id));
    let batch =
        |checks: Vec<CheckRequest>| with_kind(NativeCall::Batch, &CheckBatchRequest { checks });
    // `key` as bytes that are not UTF-8: undecodable as a CheckRequest.
    let not_utf8 = vec![0x0a, 0x02, 0xff, 0xfe];
    let mut bad = vec![NativeCall::Check as u8];
    bad.extend(&not_utf8);
    let stream = |checks: &[CheckRequest]| {
        stream_input(
            &checks
                .iter()
                .map(Message::encode_to_vec)
                .collect::<Vec<_>>(),
        )
    };
    let mut broken = checks_of(&[check("a", 1, 1)]);
    broken.push(not_utf8.clone());
    broken.push(check("a", 1, 3).encode_to_vec());
    vec![
        ("check".into(), c("some-key", 1, 7)),
        ("check-gold".into(), c("gold-key", 30, 1)),
        ("check-internal".into(), c("internal-key", 1000, 2)),
        ("check-cost-0".into(), c("some-key", 0, 3)),
        ("check-over-capacity".into(), c("some-key", 6, 4)),
        ("check-cost-too-high".into(), c("some-key", 1001, 5)),
        ("check-empty-key".into(), c("", 1, 6)),
        ("check-not-utf8".into(), bad),
        (
            "batch".into(),
            batch(vec![
                check("a", 1, 1),
                check("gold-key", 2, 2),
                check("a", 5, 3),
            ]),
        ),
        (
            "batch-too-many".into(),
            batch((0..9).map(|i| check("a", 1, i)).collect()),
        ),
        (
            "batch-one-invalid".into(),
            batch(vec![check("a", 1, 1), check("", 1, 2)]),
        ),
        (
            "stream".into(),
            stream(&[
                check("a", 2, 1),
                check("", 1, 2),
                check("a", 4, 3),
                check("a", 1, 4),
            ]),
        ),
        ("stream-malformed".into(), stream_input(&broken)),
    ]
}

fn checks_of(checks: &[CheckRequest]) -> Vec<Vec<u8>> {
    checks.iter().map(Message::encode_to_vec).collect()
}

fn desc(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

fn rls(domain: &str, descriptors: Vec<RateLimitDescriptor>, hits: u32) -> Vec<u8> {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: hits,
    }
    .encode_to_vec()
}

fn envoy() -> Vec<(String, Vec<u8>)> {
    let override_limit = RateLimitDescriptor {
        limit: Some(RateLimitOverride {
            requests_per_unit: 2,
            unit: 1,
        }),
        ..desc(&[("remote_address", "10.0.0.1")])
    };
    let refund = RateLimitDescriptor {
        is_negative_hits: true,
        hits_addend: Some(UInt64Value { value: 3 }),
        ..desc(&[("api_key", "gold-key")])
    };
    vec![
        (
            "plans".into(),
            rls("plans", vec![desc(&[("api_key", "k1")])], 0),
        ),
        (
            "plans-scoped".into(),
            rls(
                "plans",
                vec![desc(&[("api_key", "gold-key"), ("path", "/a")]), refund],
                2,
            ),
        ),
        (
            "edge-ip".into(),
            rls("edge", vec![desc(&[("remote_address", "192.0.2.1")])], 11),
        ),
        (
            "edge-three".into(),
            rls(
                "edge",
                vec![
                    desc(&[("remote_address", "203.0.113.7")]),
                    desc(&[("api_key", "partner-key-123")]),
                    desc(&[("method", "POST"), ("api_key", "k")]),
                ],
                1,
            ),
        ),
        (
            "edge-unlimited-shadow".into(),
            rls(
                "edge",
                vec![
                    desc(&[("path", "/healthz")]),
                    desc(&[("path", "/v2/users")]),
                ],
                1,
            ),
        ),
        ("edge-override".into(), rls("edge", vec![override_limit], 3)),
        (
            "tb-replaces".into(),
            rls(
                "tb",
                vec![
                    desc(&[("user", "u")]),
                    desc(&[("user", "u"), ("path", "/admin/x")]),
                ],
                4,
            ),
        ),
        (
            "other-domain".into(),
            rls("someone-else", vec![desc(&[("a", "b")])], 1),
        ),
        ("empty-domain".into(), rls("", vec![desc(&[("a", "b")])], 1)),
        ("empty-entries".into(), rls("edge", vec![desc(&[])], 1)),
        // `domain` as bytes that are not UTF-8.
        ("not-utf8".into(), vec![0x0a, 0x02, 0xff, 0xfe]),
    ]
}
