//! The Grafana dashboard `deploy/grafana/stevedore.json`: importable (title, uid, schema
//! version, panels laid out on the 24-column grid without overlapping, every query on the
//! `${datasource}` variable, every `$variable` defined), and every metric its queries name is
//! one stevedore exports, as the metric table of `docs/observability.md` lists them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

const DATASOURCE: &str = "${datasource}";

/// Metric families the dashboard must show (the rest of the table is welcome too).
const REQUIRED: [&str; 21] = [
    "stevedore_requests_total",
    "stevedore_request_ttfb_seconds",
    "stevedore_request_duration_seconds",
    "stevedore_cache_lookups_total",
    "stevedore_upstream_requests_total",
    "stevedore_upstream_bytes_total",
    "stevedore_token_fetches_total",
    "stevedore_fills_total",
    "stevedore_fills_in_flight",
    "stevedore_digest_mismatches_total",
    "stevedore_evictions_total",
    "stevedore_store_bytes",
    "stevedore_store_entries",
    "stevedore_store_low_space",
    "stevedore_store_pass_throughs_total",
    "stevedore_connections",
    "stevedore_stream_buffer",
    "stevedore_upstream_ratelimit_limit",
    "stevedore_upstream_ratelimit_remaining",
    "stevedore_config_reloads_total",
    "stevedore_fill_resumes_total",
];

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&repo_file("deploy/grafana/stevedore.json")).expect("dashboard JSON")
}

/// Every panel, those inside collapsed rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// The metric families of docs/observability.md's table, with their types.
fn documented_families() -> BTreeMap<String, String> {
    let doc = repo_file("docs/observability.md");
    let mut families = BTreeMap::new();
    for line in doc.lines() {
        let Some(rest) = line.strip_prefix("| `stevedore_") else {
            continue;
        };
        let cells: Vec<&str> = rest.split('|').map(str::trim).collect();
        let name = cells[0].split('`').next().expect("a name");
        let kind = cells.get(1).copied().unwrap_or_default();
        families.insert(format!("stevedore_{name}"), kind.to_owned());
    }
    assert!(
        families.len() >= REQUIRED.len(),
        "docs/observability.md lists {families:?}: no metric table with `stevedore_…` names"
    );
    families
}

/// The `stevedore_…` names in a query.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("stevedore_") {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..len].to_owned());
        rest = &tail[len..];
    }
    names
}

/// The queries: panel targets' `expr` and query variables' `query`.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().expect("a target expr").to_owned());
        }
    }
    for v in variables(dashboard) {
        if v["type"] == "query" {
            let query = &v["query"];
            let text = query["query"].as_str().or(query.as_str());
            out.push(text.expect("a variable query").to_owned());
        }
    }
    out
}

fn variables(dashboard: &Value) -> &Vec<Value> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
}

#[test]
fn dashboard_is_importable() {
    let d = dashboard();
    for key in ["title", "uid"] {
        assert!(d[key].as_str().is_some_and(|s| !s.is_empty()), "no {key}");
    }
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    assert!(d.get("id").is_none_or(Value::is_null), "an instance's id");

    let vars = variables(&d);
    let datasource = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(datasource["name"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let defined: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"]["uid"], DATASOURCE, "variable {}", v["name"]);
    }

    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let all = panels(&d);
    assert!(all.len() > 10, "{} panels", all.len());
    for p in all {
        let title = p["title"].as_str().expect("a title").to_owned();
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: id {id} is taken");
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.clone()) {
                    panic!("{title} overlaps {other} at ({cx}, {cy})");
                }
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(p["datasource"]["uid"], DATASOURCE, "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], DATASOURCE, "{title}");
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}");
            let expr = t["expr"].as_str().expect("expr");
            for (open, close) in [('(', ')'), ('{', '}'), ('[', ']')] {
                assert_eq!(
                    expr.matches(open).count(),
                    expr.matches(close).count(),
                    "{title}: unbalanced {open}{close} in {expr}"
                );
            }
        }
    }

    // Every `$variable` a query uses is defined (Grafana's own `$__…` aside).
    for q in queries(&d) {
        for part in q.split('$').skip(1) {
            let name: String = part
                .trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                name.starts_with("__") || defined.contains(name.as_str()),
                "${name} in {q} is not a variable"
            );
        }
    }
}

#[test]
fn dashboard_queries_only_documented_metrics() {
    let d = dashboard();
    let families = documented_families();
    let mut shown = BTreeSet::new();
    for q in queries(&d) {
        for name in metric_names(&q) {
            let family = if families.contains_key(&name) {
                name.clone()
            } else {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or_else(|| panic!("{name} (in {q}) is not in docs/observability.md"));
                let kind = families.get(base).map(String::as_str);
                assert_eq!(kind, Some("histogram"), "{name} (in {q})");
                base.to_owned()
            };
            shown.insert(family);
        }
    }
    for family in REQUIRED {
        assert!(families.contains_key(family), "{family} is not documented");
        assert!(
            shown.contains(family),
            "the dashboard does not show {family}"
        );
    }
}
