//! What an operator sees of a cold pull through the real binary: its spans exported over
//! OTLP to a receiver the test runs (request spans with their client's `traceparent` as
//! parent, token, upstream and store-read children, one fill parented by the request that
//! started it and linked to those that joined it); JSON log lines that all carry their
//! request's id, the fill's included; latency histograms and gauges, each metric documented.

mod common;

use common::util::direct_client as client;

use std::collections::BTreeSet;
use std::time::Duration;

use common::faults::{Fault, FaultProxy, Rule};
use common::images::{self, ImageSpec};
use common::otlp::Receiver;
use common::process::Process;
use common::registry::Registry;
use common::stevedore::registry_section;
use common::token_server::TokenServer;
use common::util::{free_port, sha256_digest};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_pull_exports_request_token_upstream_store_and_fill_spans() {
    let tokens = TokenServer::builder()
        .user("puller", "pw", &["team/"])
        .start();
    let registry = Registry::token(&tokens);
    let image = images::push_image(
        &registry,
        "team/app",
        "v1",
        &ImageSpec::seed(2101).large_layer(2 << 20),
    )
    .await;
    // The layer arrives slowly, so that the requests after the first join its fill.
    let faults = FaultProxy::start(&registry.url()).await;
    faults.add(
        Rule::new(
            "/blobs/",
            Fault::Slow {
                per_chunk: Duration::from_millis(10),
            },
        )
        .method("GET"),
    );
    let receiver = Receiver::start().await;
    let store = tempfile::tempdir().expect("tempdir");
    let host = registry.host();
    let mut proxy = Process::start(
        "",
        &format!(
            "[store]\npath = \"{}\"\n[tracing]\notlp-endpoint = \"{}\"\n{}",
            store.path().display(),
            receiver.url(),
            registry_section(
                &host,
                &faults.url(),
                &format!(
                    "username = \"puller\"\npassword = \"pw\"\nauth-realms = [\"{}\"]",
                    tokens.url()
                )
            )
        ),
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    );
    let base = format!("{}/v2/team/app", proxy.url());
    let http = client();

    // The manifest, under the client's own trace.
    let manifest = http
        .get(format!("{base}/manifests/v1?ns={host}"))
        .header("accept", common::pulls::OCI_ACCEPT)
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .send()
        .await
        .expect("manifest");
    assert_eq!(manifest.status(), 200);
    let manifest_request_id = manifest
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();

    // Three concurrent requests for the cold layer: one fill.
    let (layer, size) = image.layers.last().cloned().expect("a layer");
    let url = format!("{base}/blobs/{layer}?ns={host}");
    let pulls = (0..3).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.get(&url).send().await.expect("blob");
            assert_eq!(r.status(), 200);
            r.bytes().await.expect("body")
        }
    });
    for body in futures_util::future::join_all(pulls).await {
        assert_eq!(body.len() as u64, size);
        assert_eq!(sha256_digest(&body), layer);
    }
    assert_eq!(faults.count("GET", &format!("/blobs/{layer}")), 1);

    // Shutting down sends what is still batched.
    assert_eq!(proxy.terminate(), Some(0), "{}", proxy.log());
    let spans = receiver.spans();
    let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(
        receiver.exports() >= 1 && spans.iter().all(|s| s.service == "stevedore"),
        "{names:?}"
    );

    // The manifest request: a child of the client's span, in the client's trace.
    let request = spans
        .iter()
        .find(|s| {
            s.name == "request"
                && s.attr("url.path")
                    .is_some_and(|p| p.contains("/manifests/"))
        })
        .unwrap_or_else(|| panic!("no manifest request span in {names:?}"));
    assert_eq!(request.trace_id, TRACE_ID);
    assert_eq!(request.parent_span_id, PARENT_ID);
    assert_eq!(
        request.attr("request_id"),
        Some(manifest_request_id.as_str())
    );
    assert_eq!(request.attr("http.response.status_code"), Some("200"));
    let children = |parent: &str, name: &str| {
        spans
            .iter()
            .filter(|s| s.parent_span_id == parent && s.name == name)
            .count()
    };
    assert!(
        children(&request.span_id, "token") >= 1,
        "no token span under the request"
    );
    assert!(
        children(&request.span_id, "upstream") >= 1,
        "no upstream span under the request"
    );
    assert!(
        children(&request.span_id, "store.read") >= 1,
        "no store read under the request"
    );

    // The layer: three request spans; the fill is a child of one and linked to the others.
    let blob_requests: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "request" && s.attr("url.path").is_some_and(|p| p.ends_with(&layer)))
        .collect();
    assert_eq!(blob_requests.len(), 3, "{names:?}");
    let fills: Vec<_> = spans.iter().filter(|s| s.name == "fill").collect();
    assert_eq!(fills.len(), 1, "{names:?}");
    let fill = fills[0];
    let leader = blob_requests
        .iter()
        .find(|r| r.span_id == fill.parent_span_id)
        .expect("the fill's parent is a request for the layer");
    assert_eq!(fill.trace_id, leader.trace_id);
    assert_eq!(fill.attr("request_id"), leader.attr("request_id"));
    assert!(
        children(&leader.span_id, "upstream") >= 1,
        "the leader asked upstream"
    );
    for joined in blob_requests.iter().filter(|r| r.span_id != leader.span_id) {
        assert!(
            fill.links.contains(&joined.span_id),
            "request {} joined the fill but is not linked to it: {:?}",
            joined.span_id,
            fill.links
        );
    }
    // No header value (a credential) becomes an attribute.
    for s in &spans {
        for (k, v) in &s.attributes {
            assert!(!v.contains("pw") || k.ends_with("path"), "{k}={v}");
            assert!(!k.to_ascii_lowercase().contains("authorization"), "{k}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_carry_their_request_id_and_metrics_are_documented() {
    let registry = Registry::open();
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(2102)).await;
    let store = tempfile::tempdir().expect("tempdir");
    let admin = free_port(std::net::Ipv4Addr::LOCALHOST.into());
    let host = registry.host();
    let proxy = Process::start(
        &format!("metrics-listen = \"127.0.0.1:{admin}\""),
        &format!(
            "[log]\nformat = \"json\"\nlevel = \"info\"\n[store]\npath = \"{}\"\n{}",
            store.path().display(),
            registry_section(&host, &registry.url(), "")
        ),
        // The config's level applies when RUST_LOG is empty.
        &[("RUST_LOG", "")],
    );
    let http = client();
    let (layer, _) = image.layers[0].clone();
    let r = http
        .get(format!(
            "{}/v2/team/app/blobs/{layer}?ns={host}",
            proxy.url()
        ))
        .send()
        .await
        .expect("blob");
    assert_eq!(r.status(), 200);
    let id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();
    r.bytes().await.expect("body");
    // The transfer ends once the bytes are verified; the second request is to be a hit, so
    // it waits for the commit.
    let committed = common::util::wait_until(Duration::from_secs(5), || {
        proxy.log().contains("fill committed").then_some(())
    });
    assert!(committed.is_some(), "{}", proxy.log());
    let warm = http
        .get(format!(
            "{}/v2/team/app/blobs/{layer}?ns={host}",
            proxy.url()
        ))
        .send()
        .await
        .expect("blob");
    let warm_id = warm.headers().get("x-request-id").cloned();
    warm.bytes().await.expect("body");
    assert_ne!(
        warm_id.as_ref().and_then(|v| v.to_str().ok()),
        Some(id.as_str())
    );

    // Every line is JSON; the request's lines and its fill's carry its id.
    let log = proxy.log();
    let mut request_lines = 0;
    let mut fill_lines = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let spans = v["spans"].as_array().cloned().unwrap_or_default();
        let ids: Vec<&str> = spans
            .iter()
            .filter_map(|s| s["request_id"].as_str())
            .collect();
        if !ids.contains(&id.as_str()) {
            continue;
        }
        match v["fields"]["message"].as_str() {
            Some("request") => request_lines += 1,
            Some("fill committed") => {
                assert_eq!(spans.last().and_then(|s| s["name"].as_str()), Some("fill"));
                fill_lines += 1;
            }
            _ => {}
        }
    }
    assert_eq!((request_lines, fill_lines), (1, 1), "{log}");

    // Histograms by route and cache outcome, gauges, and every family in the docs.
    let metrics = http
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for needle in [
        "stevedore_request_ttfb_seconds_bucket{cache=\"miss\",route=\"blob\",le=\"+Inf\"} 1",
        "stevedore_request_ttfb_seconds_bucket{cache=\"hit\",route=\"blob\",le=\"+Inf\"} 1",
        "stevedore_request_duration_seconds_count{cache=\"miss\",route=\"blob\"} 1",
        "stevedore_fills_in_flight 0",
        "stevedore_store_entries 1",
        "stevedore_connections ",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/observability.md"),
    )
    .expect("docs/observability.md");
    for line in metrics.lines().filter(|l| l.starts_with("# TYPE ")) {
        let family = line.split_whitespace().nth(2).unwrap_or_default();
        assert!(
            docs.contains(&format!("`{family}`")),
            "{family} is not documented in docs/observability.md"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clients_sampled_traceparent_cannot_force_export() {
    let receiver = Receiver::start().await;
    let mut proxy = Process::start(
        "",
        &format!(
            "[tracing]\notlp-endpoint = \"{}\"\nsample-ratio = 0.0\n",
            receiver.url()
        ),
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let http = client();
    for _ in 0..20 {
        let r = http
            .get(format!("{}/v2/", proxy.url()))
            .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
            .send()
            .await
            .expect("ping");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(proxy.terminate(), Some(0), "{}", proxy.log());
    assert!(receiver.spans().is_empty(), "{:?}", receiver.spans());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standard_otlp_variables_turn_export_on() {
    let receiver = Receiver::start().await;
    // No [tracing] section: OTEL_EXPORTER_OTLP_ENDPOINT (a base URL) and OTEL_SERVICE_NAME.
    let mut proxy = Process::start(
        "",
        "",
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://{}", receiver.addr),
            ),
            ("OTEL_SERVICE_NAME", "edge-cache"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let r = client()
        .get(format!("{}/v2/", proxy.url()))
        .send()
        .await
        .expect("ping");
    assert_eq!(r.status(), 200);
    assert_eq!(proxy.terminate(), Some(0), "{}", proxy.log());
    let spans = receiver.spans();
    assert!(
        spans.iter().any(|s| s.name == "request"
            && s.service == "edge-cache"
            && s.attr("url.path") == Some("/v2/")),
        "{spans:?}"
    );
}
