use crate::shared;
use crate::support::get;

#[test]
fn health_reports_version_commit_and_a_working_d1() {
    let r = get(&shared().app.url("/health"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["ok"], true);
    assert_eq!(body["d1"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let commit = body["commit"].as_str().unwrap();
    assert!(!commit.is_empty());
    assert!(r.header("X-Request-Id").is_some_and(|id| id.starts_with("req_")));
}

#[test]
fn the_public_catalog_needs_no_token_and_lists_tiers_in_order() {
    let r = get(&shared().app.url("/api/plans"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    let ids: Vec<&str> = body["tiers"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["free", "essential", "pro", "premium"]);
    assert_eq!(body["tiers"][1]["trialDays"], 3);
    assert!(body["tiers"][0]["limits"].as_array().unwrap().iter().any(|l| l["monthly"].is_u64()));
}

/// The budget guards against regressions. Issue 10's migration endpoints (plan keys,
/// customer records and their API, credit import, purge) took the bundle to ~280 KB
/// gzip and the budget to 290 KiB for a while; the size cuts that followed brought it
/// back under 250 KiB, and the fixes of issue 10's review (purge safety checks, the
/// legacy email mapping, revised credit corrections, accounts only the legacy keys know
/// judged by their record, KV deletes retried with a backoff) to ~255 KiB: the budget is
/// 256 KiB (BENCHMARKS.md, 2026-12-01).
#[test]
fn the_wasm_bundle_gzips_under_256_kib() {
    use std::io::Write;
    let wasm = std::fs::read(crate::support::root().join("build/index_bg.wasm")).expect("built by make test");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&wasm).unwrap();
    let gz = enc.finish().unwrap().len();
    assert!(gz < 256 * 1024, "wasm is {gz} bytes gzipped, over the 256 KiB budget");
}
