//! The Grafana dashboard `dashboards/quotad.json`: the structure Grafana
//! needs to import it (fields, panel ids and types, a 24-column grid
//! without overlaps, targets, template variables), every metric its
//! queries name is one the daemon exports, every query is PromQL that
//! promtool accepts, and the main panels, evaluated by Prometheus's own
//! engine over a real scrape, show what the traffic did.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::TestDaemon;

/// Panel types the dashboard may use (all built into Grafana).
const PANEL_TYPES: &[&str] = &[
    "row",
    "timeseries",
    "stat",
    "gauge",
    "table",
    "bargauge",
    "text",
];

/// Variables Grafana itself defines.
const BUILTINS: &[&str] = &["__rate_interval", "__range", "__interval"];

/// Units the panels may use (Grafana unit ids).
const UNITS: &[&str] = &["reqps", "percentunit", "s", "short", "bytes", "none"];

/// The oldest schema version the dashboard may declare.
const MIN_SCHEMA: u64 = 36;

/// Grafana's grid is 24 columns wide.
const COLUMNS: u64 = 24;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    let path = repo_file(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("dashboards/quotad.json"))
        .unwrap_or_else(|e| panic!("dashboards/quotad.json is not JSON: {e}"))
}

/// Every panel, those inside (collapsed) rows too.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Every query as (panel id, refId, expr).
fn queries(d: &Value) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        let id = p["id"].as_u64().unwrap_or(0);
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let ref_id = t["refId"].as_str().unwrap_or_default();
                out.push((id, ref_id.to_owned(), expr.to_owned()));
            }
        }
    }
    out
}

/// The query of a `query` template variable (a string, or an object with
/// `query` as Grafana 10 and later export it).
fn variable_query(v: &Value) -> Option<&str> {
    v["query"].as_str().or_else(|| v["query"]["query"].as_str())
}

/// `text` with each `$name`, `${name}` and `${name:format}` replaced by
/// `value(name)` (kept as written when that is `None`). An unclosed `${`
/// names the rest of the text.
fn expand(text: &str, mut value: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, written) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => {
                    let inner = &braced[..end];
                    (inner.split(':').next().unwrap_or(inner), end + 2)
                }
                None => (braced, after.len()),
            }
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..len], len)
        };
        let whole = &rest[at..at + 1 + written];
        if name.is_empty() {
            // A lone `$` (a regex anchor, say) is not a variable.
            out.push_str(whole);
        } else {
            match value(name) {
                Some(v) => out.push_str(&v),
                None => out.push_str(whole),
            }
        }
        rest = &rest[at + 1 + written..];
    }
    out.push_str(rest);
    out
}

/// The names of the variables `text` uses.
fn variables(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    expand(text, |name| {
        names.push(name.to_owned());
        None
    });
    names
}

/// `text` with each string literal (quoted by one of `quotes`, with
/// backslash escapes except in backticks) blanked to spaces, so brackets
/// and names inside strings are not code.
fn strip_strings(text: &str, quotes: &[char]) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if !quotes.contains(&c) {
            out.push(c);
            continue;
        }
        out.push(' ');
        let mut closed = false;
        while let Some(s) = chars.next() {
            out.push(' ');
            if s == '\\' && c != '`' {
                chars.next();
                out.push(' ');
            } else if s == c {
                closed = true;
                break;
            }
        }
        if !closed {
            return Err(format!("unterminated {c} string"));
        }
    }
    Ok(out)
}

/// PromQL's string quotes.
const PROMQL_QUOTES: &[char] = &['"', '\'', '`'];

/// Whether the brackets of `expr` (outside strings) pair up.
fn balanced(expr: &str) -> Result<(), String> {
    let code = strip_strings(expr, PROMQL_QUOTES)?;
    let mut open = Vec::new();
    for (i, c) in code.chars().enumerate() {
        match c {
            '(' | '[' | '{' => open.push(c),
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open.pop() != Some(want) {
                    return Err(format!("unmatched {c:?} at {i}"));
                }
            }
            _ => {}
        }
    }
    match open.last() {
        Some(c) => Err(format!("unclosed {c:?}")),
        None => Ok(()),
    }
}

/// The `quotad_*` and `process_*` names `expr` uses (outside strings,
/// not variables).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let code = strip_strings(expr, PROMQL_QUOTES).unwrap_or_default();
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    let mut prev = ' ';
    let mut word = String::new();
    for c in code.chars().chain([' ']) {
        if is_name(c) && (!word.is_empty() || !c.is_ascii_digit()) {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            if prev != '$' && (word.starts_with("quotad_") || word.starts_with("process_")) {
                out.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
        prev = c;
    }
    out
}

fn as_int(v: &Value) -> Option<u64> {
    // Integers only: Grafana refuses 1.5, and serde keeps 1.0 a float.
    v.as_u64()
}

/// What keeps Grafana from importing `d`, or shows it wrongly; empty when
/// nothing does.
fn problems(d: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            p.push(what);
        }
    };

    // Top level.
    need(
        d["title"].as_str().is_some_and(|t| !t.is_empty()),
        "title: a non-empty string".into(),
    );
    need(d["uid"] == "quotad", "uid: \"quotad\"".into());
    need(
        as_int(&d["schemaVersion"]).is_some_and(|v| v >= MIN_SCHEMA),
        format!(
            "schemaVersion: an integer >= {MIN_SCHEMA}, got {}",
            d["schemaVersion"]
        ),
    );
    need(
        as_int(&d["version"]).is_some(),
        "version: an integer".into(),
    );
    need(d["editable"].is_boolean(), "editable: a boolean".into());
    need(
        d["time"]["from"].is_string() && d["time"]["to"].is_string(),
        "time: {from, to} strings".into(),
    );
    need(
        d["refresh"].is_string() || d["refresh"] == false,
        "refresh: a string (or false)".into(),
    );
    need(
        d["tags"]
            .as_array()
            .is_some_and(|t| t.iter().all(Value::is_string)),
        "tags: an array of strings".into(),
    );
    need(
        d["annotations"]["list"].as_array().is_some_and(|l| {
            l.iter().any(|a| {
                a["builtIn"] == 1
                    && a["type"] == "dashboard"
                    && a["datasource"]["type"] == "grafana"
            })
        }),
        "annotations.list: Grafana's built-in annotation".into(),
    );
    need(
        d["panels"].as_array().is_some_and(|p| !p.is_empty()),
        "panels: a non-empty array".into(),
    );

    // Template variables.
    let vars: Vec<&Value> = d["templating"]["list"]
        .as_array()
        .map(|l| l.iter().collect())
        .unwrap_or_default();
    need(
        d["templating"]["list"].is_array(),
        "templating.list: an array".into(),
    );
    let mut defined = BTreeSet::new();
    for v in &vars {
        let name = v["name"].as_str().unwrap_or_default();
        need(
            !name.is_empty() && v["type"].is_string(),
            format!("variable {v}: name and type"),
        );
        need(
            defined.insert(name.to_owned()),
            format!("variable {name:?} defined twice"),
        );
    }
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).copied();
    need(
        var("datasource").is_some_and(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "variable datasource: type datasource, query prometheus".into(),
    );
    need(
        var("instance").is_some_and(|v| {
            v["type"] == "query"
                && v["includeAll"] == true
                && v["multi"] == true
                && variable_query(v) == Some("label_values(quotad_build_info, instance)")
        }),
        "variable instance: a multi, include-all query over label_values(quotad_build_info, instance)"
            .into(),
    );
    let mut uses: Vec<(String, String)> = Vec::new();
    for v in &vars {
        let name = v["name"].as_str().unwrap_or_default();
        if let Some(uid) = v["datasource"]["uid"].as_str() {
            uses.push((format!("variable {name} datasource"), uid.to_owned()));
        }
        if v["type"] == "query" {
            uses.push((
                format!("variable {name} query"),
                variable_query(v).unwrap_or_default().to_owned(),
            ));
        }
    }

    // Panels.
    let mut ids = BTreeSet::new();
    let mut rects: Vec<(u64, [u64; 4])> = Vec::new();
    for panel in panels(d) {
        let id = as_int(&panel["id"]);
        let at = format!(
            "panel {} {:?}",
            panel["id"],
            panel["title"].as_str().unwrap_or("?")
        );
        need(id.is_some(), format!("{at}: id is an integer"));
        if let Some(id) = id {
            need(ids.insert(id), format!("{at}: id {id} used twice"));
        }
        need(
            panel["title"].as_str().is_some_and(|t| !t.is_empty()),
            format!("{at}: a title"),
        );
        let kind = panel["type"].as_str().unwrap_or_default();
        need(
            PANEL_TYPES.contains(&kind),
            format!("{at}: unknown type {kind:?}"),
        );
        let g = &panel["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| as_int(&g[k]));
        match (h, w, x, y) {
            (Some(h), Some(w), Some(x), Some(y)) => {
                need(h > 0 && w > 0, format!("{at}: gridPos h and w > 0"));
                need(
                    x + w <= COLUMNS,
                    format!("{at}: gridPos x + w = {} > {COLUMNS}", x + w),
                );
                if kind != "row" {
                    rects.push((id.unwrap_or(0), [x, y, w, h]));
                }
            }
            _ => need(false, format!("{at}: gridPos {{h, w, x, y}} integers")),
        }
        if kind == "row" || kind == "text" {
            continue;
        }
        let ds = &panel["datasource"];
        need(
            ds["type"] == "prometheus" && ds["uid"].is_string(),
            format!("{at}: datasource {{type: prometheus, uid}}"),
        );
        if let Some(uid) = ds["uid"].as_str() {
            uses.push((format!("{at} datasource"), uid.to_owned()));
        }
        if let Some(unit) = panel["fieldConfig"]["defaults"].get("unit") {
            let unit = unit.as_str().unwrap_or_default();
            need(
                UNITS.contains(&unit),
                format!("{at}: unknown unit {unit:?}"),
            );
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        need(!targets.is_empty(), format!("{at}: at least one target"));
        let mut refs = BTreeSet::new();
        for t in targets {
            let r = t["refId"].as_str().unwrap_or_default();
            need(!r.is_empty(), format!("{at}: a target without refId"));
            need(refs.insert(r), format!("{at}: refId {r:?} used twice"));
            let expr = t["expr"].as_str().unwrap_or_default();
            need(!expr.trim().is_empty(), format!("{at} {r}: an empty expr"));
            need(
                t["legendFormat"].is_string(),
                format!("{at} {r}: a legendFormat"),
            );
            if let Err(e) = balanced(expr) {
                need(false, format!("{at} {r}: {e} in {expr}"));
            }
            uses.push((format!("{at} {r} expr"), expr.to_owned()));
            if let Some(uid) = t["datasource"]["uid"].as_str() {
                uses.push((format!("{at} {r} datasource"), uid.to_owned()));
            }
        }
    }
    for (i, (a, [ax, ay, aw, ah])) in rects.iter().enumerate() {
        for (b, [bx, by, bw, bh]) in &rects[i + 1..] {
            let apart = ax + aw <= *bx || bx + bw <= *ax || ay + ah <= *by || by + bh <= *ay;
            need(apart, format!("panels {a} and {b} overlap"));
        }
    }
    for (at, text) in &uses {
        for name in variables(text) {
            need(
                defined.contains(&name) || BUILTINS.contains(&name.as_str()),
                format!("{at}: undefined variable ${name}"),
            );
        }
    }
    p
}

#[test]
fn dashboard_is_valid_grafana_json() {
    let d = dashboard();
    let found = problems(&d);
    assert!(
        found.is_empty(),
        "dashboards/quotad.json:\n{}",
        found.join("\n")
    );
    assert!(!queries(&d).is_empty());

    // The checks catch what they are for: each break below is reported.
    let broken = |what: &str, f: &dyn Fn(&mut Value)| {
        let mut b = d.clone();
        f(&mut b);
        let found = problems(&b);
        assert!(
            found.iter().any(|p| p.contains(what)),
            "{what:?} not reported: {found:?}"
        );
    };
    let second = |b: &mut Value| -> usize {
        // The index of the second non-row panel.
        let all = b["panels"].as_array().expect("panels");
        all.iter()
            .enumerate()
            .filter(|(_, p)| p["type"] != "row")
            .nth(1)
            .expect("two panels")
            .0
    };
    broken("overlap", &|b| {
        let i = second(b);
        let first = b["panels"].as_array().expect("panels")[..i]
            .iter()
            .rfind(|p| p["type"] != "row")
            .expect("a panel")["gridPos"]
            .clone();
        b["panels"][i]["gridPos"] = first;
    });
    broken("used twice", &|b| {
        let i = second(b);
        b["panels"][i]["id"] = b["panels"][0]["id"].clone();
    });
    broken("unclosed", &|b| {
        let i = second(b);
        let e = b["panels"][i]["targets"][0]["expr"].as_str().expect("expr");
        b["panels"][i]["targets"][0]["expr"] = format!("sum({e}").into();
    });
    broken("unmatched", &|b| {
        let i = second(b);
        let e = b["panels"][i]["targets"][0]["expr"].as_str().expect("expr");
        b["panels"][i]["targets"][0]["expr"] = format!("{e})").into();
    });
    broken("undefined variable $instanc", &|b| {
        let i = second(b);
        let e = b["panels"][i]["targets"][0]["expr"].as_str().expect("expr");
        b["panels"][i]["targets"][0]["expr"] = e.replace("$instance", "$instanc").into();
    });
    broken("x + w", &|b| {
        let i = second(b);
        b["panels"][i]["gridPos"]["x"] = 23.into();
    });
    broken("unknown type", &|b| {
        let i = second(b);
        b["panels"][i]["type"] = "graph-old".into();
    });
    broken("schemaVersion", &|b| b["schemaVersion"] = json!(39.5));
}

/// Metrics that are there only with Redis configured, after an admin
/// change, with `metrics.heavy_keys` > 0, or once Envoys report over RLQS.
fn conditional(name: &str) -> bool {
    name.starts_with("quotad_redis_")
        || [
            "quotad_strict_fail_mode_total",
            "quotad_admin_mutations_total",
            "quotad_heavy_key_checks",
            // Envoy RLQS: counted once Envoys report (the gauges by rule
            // once a rule has reporters).
            "quotad_rlqs_assignments_total",
            "quotad_rlqs_abandons_total",
            "quotad_rlqs_refused_total",
            "quotad_rlqs_demand",
            "quotad_rlqs_assigned_rate",
        ]
        .contains(&name)
}

/// Metric families (name to kind) from the `# TYPE` lines of a scrape.
fn scraped_families(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

/// Metric families (name to kind) the source describes: the `DESCRIBED`
/// table of `src/metrics/mod.rs` (by the names of `names`, in
/// `src/metrics/exposition.rs`) and the gauges `src/metrics/heavy.rs`
/// renders itself.
fn source_families() -> BTreeMap<String, String> {
    let metrics = read("src/metrics/mod.rs");
    let exposition = read("src/metrics/exposition.rs");
    let heavy = read("src/metrics/heavy.rs");
    // `pub const REDIS_UP: &str = "quotad_redis_up";`
    let names: BTreeMap<&str, &str> = exposition
        .lines()
        .filter_map(|l| {
            let (ident, rest) = l
                .trim()
                .strip_prefix("pub const ")?
                .split_once(": &str = \"")?;
            Some((ident, rest.strip_suffix("\";")?))
        })
        .collect();
    assert!(
        names.values().any(|n| *n == "quotad_checks_total"),
        "no metric names found in src/metrics/exposition.rs"
    );
    let mut out = BTreeMap::new();
    // `(REDIS_UP, Kind::Gauge, "help"),` entries of `const DESCRIBED`.
    let start = metrics
        .find("const DESCRIBED")
        .expect("src/metrics/mod.rs has const DESCRIBED");
    let table = &metrics[start..];
    let table = &table[..table.find("\n];").expect("DESCRIBED ends")];
    let table = strip_strings(table, &['"']).expect("DESCRIBED's strings close");
    for entry in table.split('(') {
        let Some((ident, rest)) = entry.split_once(',') else {
            continue;
        };
        let Some(kind) = rest.trim().strip_prefix("Kind::") else {
            continue;
        };
        let kind = kind
            .split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .unwrap_or_default();
        if let Some(name) = names.get(ident.trim()) {
            out.insert((*name).to_owned(), kind.to_ascii_lowercase());
        }
    }
    // `header(out, names::HEAVY, "gauge", "help")` in heavy.rs.
    for call in heavy.split("header(").skip(1) {
        let args: Vec<&str> = call.splitn(4, ',').map(str::trim).collect();
        if let [_, name, kind, _] = args.as_slice()
            && let Some(ident) = name.strip_prefix("names::")
            && let Some(name) = names.get(ident)
        {
            out.insert((*name).to_owned(), kind.trim_matches('"').to_owned());
        }
    }
    out
}

/// The family in `families` that the series name `name` belongs to: its
/// own (not a histogram), or that of a histogram's `_bucket`, `_sum` or
/// `_count` series.
fn family_of<'f>(name: &str, families: &'f BTreeMap<String, String>) -> Option<&'f str> {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some((family, kind)) = families.get_key_value(base)
            && kind == "histogram"
        {
            return Some(family);
        }
    }
    families
        .get_key_value(name)
        .filter(|(_, kind)| *kind != "histogram")
        .map(|(family, _)| family.as_str())
}

/// The names of `used` that neither the scrape nor (for conditional
/// metrics) the source has, each with why.
fn unexported(
    used: &BTreeSet<String>,
    scraped: &BTreeMap<String, String>,
    source: &BTreeMap<String, String>,
) -> Vec<String> {
    used.iter()
        .filter(|name| family_of(name, scraped).is_none())
        .filter_map(|name| {
            if !conditional(name) {
                Some(format!("{name}: not in /metrics"))
            } else if family_of(name, source).is_none() {
                Some(format!(
                    "{name}: not in DESCRIBED (src/metrics/mod.rs) nor src/metrics/heavy.rs"
                ))
            } else {
                None
            }
        })
        .collect()
}

#[tokio::test]
async fn dashboard_queries_name_metrics_the_daemon_exports() {
    let dash = dashboard();
    let mut used = BTreeSet::new();
    let mut texts: Vec<String> = queries(&dash).into_iter().map(|(_, _, e)| e).collect();
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        texts.extend(variable_query(v).map(str::to_owned));
    }
    for text in &texts {
        // Metrics are named as such, so the check below sees every one.
        assert!(
            !text.contains("__name__"),
            "a query matches on __name__: {text}"
        );
        used.extend(metric_names(text));
    }
    for must in [
        "quotad_checks_total",
        "quotad_check_duration_seconds_bucket",
        "quotad_redis_up",
        "quotad_build_info",
    ] {
        assert!(
            used.contains(must),
            "the dashboard does not query {must}: {used:?}"
        );
    }

    let d = TestDaemon::start().await;
    d.check("gold-key", 1).await;
    d.check("gold-key", 1).await;
    let (status, body) = d.http_get("/metrics").await;
    assert_eq!(status, 200, "{body}");
    let scraped = scraped_families(&body);
    assert!(
        scraped.contains_key("quotad_checks_total"),
        "no TYPE lines in the scrape:\n{body}"
    );
    let source = source_families();

    let missing = unexported(&used, &scraped, &source);
    assert!(
        missing.is_empty(),
        "dashboard queries name metrics the daemon does not export:\n{}\n\nscraped: {:?}\nsource: {:?}",
        missing.join("\n"),
        scraped.keys().collect::<Vec<_>>(),
        source.keys().collect::<Vec<_>>()
    );

    // A misspelt or renamed metric is caught, scraped or conditional; a
    // histogram's series only by their own suffixes.
    for wrong in [
        "quotad_checks_totl",
        "quotad_redis_upp",
        "quotad_check_duration_seconds",
        "quotad_redis_flush_duration_seconds",
        "quotad_checks_total_bucket",
        "quotad_heavy_key_check",
        "quotad_admin_mutation_total",
    ] {
        let one = BTreeSet::from([wrong.to_owned()]);
        assert_eq!(
            unexported(&one, &scraped, &source).len(),
            1,
            "{wrong} was taken for an exported metric"
        );
    }
}

/// promtool: `$QUOTAD_PROMTOOL` (set by scripts/test.sh), else on PATH.
fn promtool() -> Option<PathBuf> {
    crate::support::tool("QUOTAD_PROMTOOL", "promtool")
}

/// `expr` as Prometheus would get it from Grafana: builtin intervals as
/// 5m, every instance.
fn as_prometheus_gets_it(expr: &str) -> String {
    expand(expr, |name| match name {
        "__rate_interval" | "__range" | "__interval" => Some("5m".into()),
        "instance" => Some(".*".into()),
        _ => None,
    })
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(promtool) = promtool() else {
        eprintln!(
            "note: no promtool (set QUOTAD_PROMTOOL or put it on PATH); the dashboard's PromQL is not checked"
        );
        return;
    };
    let rules: Vec<Value> = queries(&dashboard())
        .into_iter()
        .map(|(id, ref_id, expr)| {
            let expr = as_prometheus_gets_it(&expr);
            assert!(!expr.contains('$'), "a variable left in {expr}");
            json!({ "record": format!("dashboard:panel_{id}_{ref_id}"), "expr": expr })
        })
        .collect();
    assert!(!rules.is_empty());
    // JSON is YAML: promtool reads it as a rules file.
    let file = json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, serde_json::to_string_pretty(&file).expect("JSON"))
        .expect("write the rules file");
    let out = std::process::Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", promtool.display()));
    let said = crate::support::printed(&out);
    assert!(
        out.status.success(),
        "promtool check rules refused the dashboard's queries ({}):\n{said}",
        out.status
    );
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "promtool did not check every query:\n{said}"
    );
}

/// The expression of the panel titled `title` (its first target).
fn panel_expr(d: &Value, title: &str) -> String {
    panels(d)
        .into_iter()
        .find(|p| p["title"] == title)
        .and_then(|p| p["targets"][0]["expr"].as_str())
        .unwrap_or_else(|| panic!("no panel {title:?}"))
        .to_owned()
}

/// `{k="v",...}` of a scraped sample, plus `instance`.
fn series_of(s: &prometheus_parse::Sample) -> String {
    let mut labels: Vec<(String, String)> = s
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.push(("instance".into(), "quotad-0".into()));
    labels.sort();
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{}{{{}}}", s.metric, inner.join(","))
}

/// The dashboard shows what happened: a scrape after known traffic is
/// fed to Prometheus's own evaluator (`promtool test rules`) as the
/// series of a replica that started at 0 and stayed put, and the panels'
/// queries must come out as the traffic says. Samples 64 s apart and a
/// 128 s rate window keep every expected value an exact binary fraction.
#[tokio::test]
async fn dashboard_panels_show_a_scripted_scenario() {
    let Some(promtool) = promtool() else {
        eprintln!("note: no promtool; the dashboard's panels are not evaluated");
        return;
    };
    let d = TestDaemon::start().await;
    // gold: 3 allowed; tiny (burst 2): 2 allowed, 2 denied.
    for key in ["gold-key", "gold-key", "gold-key"] {
        assert!(d.check(key, 1).await.allowed);
    }
    let mut allowed = 0;
    for _ in 0..4 {
        allowed += usize::from(d.check("tiny-key", 1).await.allowed);
    }
    assert_eq!(allowed, 2);
    let (status, body) = d.http_get("/metrics").await;
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("prometheus text");
    let mut input = Vec::new();
    for s in &scrape.samples {
        let (v, counter) = match s.value {
            prometheus_parse::Value::Counter(v) => (v, true),
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => (v, false),
            // Histograms are not what these panels read.
            _ => continue,
        };
        // A counter is 0 until the last sample, a gauge holds its value:
        // so rate over the whole 128 s is v/128 whether the range is
        // closed (Prometheus 2) or left-open (Prometheus 3).
        let start = if counter { 0.0 } else { v };
        input.push(json!({ "series": series_of(s), "values": format!("{start} {start} {v}") }));
    }
    let dash = dashboard();
    let expr = |title: &str| {
        expand(&panel_expr(&dash, title), |name| match name {
            "__rate_interval" | "__range" | "__interval" => Some("128s".into()),
            "instance" => Some(".*".into()),
            _ => None,
        })
    };
    let sample = |labels: &str, value: f64| json!({ "labels": labels, "value": value });
    let tests = [
        (
            "Checks per second by result",
            vec![
                sample(r#"{result="allowed"}"#, 5.0 / 128.0),
                sample(r#"{result="denied"}"#, 2.0 / 128.0),
                sample(r#"{result="shadow_denied"}"#, 0.0),
                sample(r#"{result="error"}"#, 0.0),
            ],
        ),
        (
            "Checks per second by API",
            vec![
                sample(r#"{api="native", door="grpc"}"#, 7.0 / 128.0),
                sample(r#"{api="batch", door="grpc"}"#, 0.0),
                sample(r#"{api="stream", door="grpc"}"#, 0.0),
                sample(r#"{api="lease", door="grpc"}"#, 0.0),
                sample(r#"{api="report", door="grpc"}"#, 0.0),
                sample(r#"{api="report_stream", door="grpc"}"#, 0.0),
                sample(r#"{api="auth", door="http"}"#, 0.0),
                sample(r#"{api="native", door="http"}"#, 0.0),
                sample(r#"{api="report", door="http"}"#, 0.0),
            ],
        ),
        (
            "Denial ratio by plan",
            vec![
                sample(r#"{plan="gold"}"#, 0.0),
                sample(r#"{plan="tiny"}"#, 0.5),
            ],
        ),
        (
            "Denials per second by reason",
            vec![
                sample(r#"{reason="limited"}"#, 2.0 / 128.0),
                sample(r#"{reason="blocked"}"#, 0.0),
                sample(r#"{reason="unavailable"}"#, 0.0),
                sample(r#"{reason="cost_exceeds_capacity"}"#, 0.0),
            ],
        ),
        ("Tracked cells vs cap", vec![sample("{}", 2.0)]),
        ("Ready replicas", vec![sample("{}", 1.0)]),
        ("Config version", vec![sample("{}", 1.0)]),
        ("Overrides in force", vec![sample("{}", 0.0)]),
    ];
    let exprs: Vec<Value> = tests
        .iter()
        .map(|(title, want)| json!({ "expr": expr(title), "eval_time": "128s", "exp_samples": want }))
        .collect();
    let file = json!({
        "rule_files": [],
        "evaluation_interval": "64s",
        "tests": [{ "interval": "64s", "input_series": input, "promql_expr_test": exprs }],
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dashboard-test.yml");
    std::fs::write(&path, serde_json::to_string_pretty(&file).expect("JSON")).expect("write");
    let out = std::process::Command::new(&promtool)
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", promtool.display()));
    assert!(
        out.status.success(),
        "the panels do not show the scenario:\n{}",
        crate::support::printed(&out)
    );
}
