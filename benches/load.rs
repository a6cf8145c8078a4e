//! `make bench`: bundle size, latency/throughput of `GET /api/plan/me` against the
//! `GET /health` baseline under the same concurrency in the same run, and D1 rows
//! read/written per request (from D1's result meta, reported by the Worker in the
//! `X-D1-Rows-Read` / `X-D1-Rows-Written` headers). Figures are ratios and counts,
//! never pass/fail timings; the only hard check is the Wasm gzip budget.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use serde_json::json;
use support::stripe_fake::{StripeFake, PRICE_ESSENTIAL, PRICE_PRO, WEBHOOK_SECRET};
use support::{agent, now, send, token, App};

const WASM_GZIP_BUDGET: usize = 256 * 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn gzip_len(bytes: &[u8]) -> usize {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap().len()
}

struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// One prepared request: headers and an optional body.
type Prepared = (Vec<(String, String)>, Option<Vec<u8>>);

/// `requests[t]` are sent in order by thread `t` over one keep-alive agent; returns the
/// run and, per response, the D1 rows read and written and the D1 round trips the
/// Worker reported.
type D1Stats = (usize, usize, usize);

fn load_prepared(method: &'static str, url: &str, requests: Vec<Vec<Prepared>>) -> (Run, Vec<D1Stats>) {
    load_expect(method, url, requests, 200)
}

/// As `load_prepared`, counting answers other than `expect` as errors.
fn load_expect(method: &'static str, url: &str, requests: Vec<Vec<Prepared>>, expect: u16) -> (Run, Vec<D1Stats>) {
    let concurrency = requests.len();
    let barrier = Arc::new(Barrier::new(concurrency + 1));
    let handles: Vec<_> = requests
        .into_iter()
        .map(|reqs| {
            let url = url.to_string();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let a = agent();
                barrier.wait();
                let mut lat = Vec::with_capacity(reqs.len());
                let mut rows = Vec::with_capacity(reqs.len());
                let mut errors = 0;
                for (headers, body) in &reqs {
                    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let t = Instant::now();
                    let r = send(&a, method, &url, &h, body.as_deref());
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    if r.status != expect {
                        errors += 1;
                    }
                    let n = |name| r.header(name).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
                    rows.push((n("X-D1-Rows-Read"), n("X-D1-Rows-Written"), n("X-D1-Round-Trips")));
                }
                (lat, rows, errors)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let (mut all, mut all_rows, mut errors) = (Vec::new(), Vec::new(), 0);
    for h in handles {
        let (lat, rows, e) = h.join().unwrap();
        all.extend(lat);
        all_rows.extend(rows);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let run =
        Run { rps: all.len() as f64 / elapsed, p50_ms: percentile(&all, 50.0), p99_ms: percentile(&all, 99.0), errors };
    (run, all_rows)
}

/// `concurrency` threads, each sending `per_thread` requests over one keep-alive agent.
fn load(url: &str, tokens: &[String], concurrency: usize, per_thread: usize) -> Run {
    let barrier = Arc::new(Barrier::new(concurrency + 1));
    let handles: Vec<_> = (0..concurrency)
        .map(|i| {
            let url = url.to_string();
            let auth = tokens.get(i % tokens.len().max(1)).map(|t| format!("Bearer {t}"));
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let a = agent();
                let headers: Vec<(&str, &str)> = auth.iter().map(|h| ("Authorization", h.as_str())).collect();
                barrier.wait();
                let mut lat = Vec::with_capacity(per_thread);
                let mut errors = 0;
                for _ in 0..per_thread {
                    let t = Instant::now();
                    let r = send(&a, "GET", &url, &headers, None);
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    if r.status != 200 {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (lat, e) = h.join().unwrap();
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Run { rps: all.len() as f64 / elapsed, p50_ms: percentile(&all, 50.0), p99_ms: percentile(&all, 99.0), errors }
}

/// The JavaScript peer (`../shared/peers/stripe-node-webhook`: the `stripe` SDK and one
/// D1 insert), copied under `target/peer` with its `stripe` dependency, run by the same
/// `wrangler` on fresh local state.
fn spawn_peer(root: &std::path::Path) -> App {
    let src = root.join("../shared/peers/stripe-node-webhook");
    let dir = root.join("target/peer");
    std::fs::create_dir_all(&dir).unwrap();
    for item in ["package.json", "package-lock.json", "wrangler.toml", "src", "migrations"] {
        let ok = std::process::Command::new("cp").arg("-r").arg(src.join(item)).arg(&dir).status().unwrap();
        assert!(ok.success(), "copy the peer's {item} from {}", src.display());
    }
    if !dir.join("node_modules/stripe").exists() {
        eprintln!("installing the peer's npm dependencies (once) …");
        let ok = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--omit=dev"])
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(ok.success(), "npm ci in {}", dir.display());
    }
    App::spawn(
        support::AppOptions { config: Some(dir.join("wrangler.toml")), ..support::AppOptions::default() }
            .var("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .var("STRIPE_SECRET_KEY", "sk_test_peer"),
    )
}

/// `concurrency` threads × `n` signed events of a type neither Worker acts on beyond
/// recording, each with its own id.
fn recorded_events(tag: &str, concurrency: usize, n: usize) -> Vec<Vec<Prepared>> {
    (0..concurrency)
        .map(|t| {
            (0..n)
                .map(|i| {
                    let body = json!({"id": format!("evt_rec_{tag}_{t}_{i}_{}", support::unique("x").replace('-', "")),
                                      "object": "event", "type": "product.created", "created": now(),
                                      "data": {"object": {"id": "prod_bench", "object": "product"}}})
                    .to_string();
                    let sig = plangate::stripe::signature::sign_for_test(body.as_bytes(), WEBHOOK_SECRET, now());
                    (vec![("Stripe-Signature".to_string(), sig)], Some(body.into_bytes()))
                })
                .collect()
        })
        .collect()
}

fn main() {
    let root = support::root();
    let wasm = std::fs::read(root.join("build/index_bg.wasm")).expect("build/index_bg.wasm: run `make bench`");
    let js = std::fs::read(root.join("build/index.js")).expect("build/index.js");
    let (wasm_gz, js_gz) = (gzip_len(&wasm), gzip_len(&js));

    let concurrency = env_usize("BENCH_CONCURRENCY", 8);
    let per_thread = env_usize("BENCH_REQUESTS", 250);
    let rounds = env_usize("BENCH_ROUNDS", 3);

    eprintln!("starting wrangler dev …");
    let stripe = StripeFake::start();
    // The D1 row counts below come from the X-D1-Rows-* headers.
    let app = App::spawn(stripe.app_options().var("EXPOSE_D1_STATS", "true"));
    let tokens: Vec<String> = (0..concurrency).map(|i| token(&support::unique(&format!("bench-{i}")))).collect();

    // D1 rows for a first request (creates the user) and a steady-state one.
    let me = app.url("/api/plan/me");
    let rows = |t: &str| {
        let r = send(&agent(), "GET", &me, &[("Authorization", &format!("Bearer {t}"))], None);
        assert_eq!(r.status, 200, "{}", r.body);
        let n = |h| r.header(h).and_then(|v| v.parse::<usize>().ok()).expect("X-D1-* header");
        (n("X-D1-Rows-Read"), n("X-D1-Rows-Written"), n("X-D1-Round-Trips"))
    };
    let first = rows(&tokens[0]);
    for t in &tokens[1..] {
        rows(t);
    }
    let steady = rows(&tokens[0]);

    // Warm up both routes, then alternate rounds so drift hits both equally.
    load(&app.url("/health"), &[], concurrency, 20);
    load(&me, &tokens, concurrency, 20);
    let (mut health, mut plan) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        health.push(load(&app.url("/health"), &[], concurrency, per_thread));
        plan.push(load(&me, &tokens, concurrency, per_thread));
    }

    // The webhook path: signed `customer.subscription.updated` deliveries, each a new
    // event id, for subscribed users; the Worker re-fetches each subscription from the
    // local Stripe fake (its latency is part of the figure).
    let wh_users: Vec<(String, String, String)> = (0..concurrency)
        .map(|i| {
            let auth = support::unique(&format!("bench-wh-{i}"));
            let r = send(&agent(), "GET", &me, &[("Authorization", &format!("Bearer {}", token(&auth)))], None);
            assert_eq!(r.status, 200);
            let uid = app.sql(&format!("SELECT id FROM users WHERE auth_id = '{auth}'"))[0]["id"]
                .as_str()
                .unwrap()
                .to_string();
            (uid, auth.replace('-', ""), auth)
        })
        .collect();
    let sub_json = |uid: &str, tag: &str, price: &str| {
        json!({"id": format!("sub_{tag}"), "object": "subscription", "customer": format!("cus_{tag}"),
               "status": "active", "created": now() - 100, "current_period_end": now() + 86400 * 30,
               "cancel_at_period_end": false, "metadata": {"user_id": uid},
               "items": {"data": [{"price": {"id": price}}]}})
    };
    let webhook = app.url("/api/stripe-webhook");
    let delivery = |id: String, sub: serde_json::Value| -> Prepared {
        let body = json!({"id": id, "object": "event", "type": "customer.subscription.updated", "created": now(),
                          "data": {"object": sub}})
        .to_string();
        let sig = plangate::stripe::signature::sign_for_test(body.as_bytes(), WEBHOOK_SECRET, now());
        (vec![("Stripe-Signature".to_string(), sig)], Some(body.into_bytes()))
    };
    for (uid, tag, _) in &wh_users {
        stripe.put_subscription(sub_json(uid, tag, PRICE_ESSENTIAL));
    }
    // Rows for one delivery that changes the plan, and one that changes nothing.
    let (uid0, tag0, _) = &wh_users[0];
    let mark0 = app.log_text().len();
    let (_, first_rows) = load_prepared(
        "POST",
        &webhook,
        vec![vec![delivery(format!("evt_bench_first_{tag0}"), sub_json(uid0, tag0, PRICE_ESSENTIAL))]],
    );
    // KV operations after the response (none happen before it: request-path billing
    // has no KV handle), summed from the Worker's `kv.copies_written` log lines.
    let kv_ops_after = |from: usize| -> usize {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let log = app.log_text();
        log[from.min(log.len())..]
            .lines()
            .filter(|l| l.contains("kv.copies_written"))
            .filter_map(|l| {
                l.split("\"kvOps\":").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse::<usize>().ok()
            })
            .sum()
    };
    let first_kv = kv_ops_after(mark0);
    let mark = app.log_text().len();
    stripe.put_subscription(sub_json(uid0, tag0, PRICE_PRO));
    let (_, change_rows) = load_prepared(
        "POST",
        &webhook,
        vec![vec![delivery(format!("evt_bench_change_{tag0}"), sub_json(uid0, tag0, PRICE_PRO))]],
    );
    let change_kv = kv_ops_after(mark);
    let mark = app.log_text().len();
    let same = delivery(format!("evt_bench_same_{tag0}"), sub_json(uid0, tag0, PRICE_PRO));
    let (_, same_rows) = load_prepared("POST", &webhook, vec![vec![same.clone()]]);
    let same_kv = kv_ops_after(mark);
    let (_, dup_rows) = load_prepared("POST", &webhook, vec![vec![same]]);
    // An event type the Worker only records (no Stripe call, no effect).
    let recorded = {
        let body = json!({"id": format!("evt_bench_recorded_{tag0}"), "object": "event", "type": "product.created",
                          "created": now(), "data": {"object": {"id": "prod_bench", "object": "product"}}})
        .to_string();
        let sig = plangate::stripe::signature::sign_for_test(body.as_bytes(), WEBHOOK_SECRET, now());
        (vec![("Stripe-Signature".to_string(), sig)], Some(body.into_bytes()))
    };
    let (_, recorded_rows) = load_prepared("POST", &webhook, vec![vec![recorded]]);
    let mut webhook_runs = Vec::new();
    let mut webhook_rows = Vec::new();
    for round in 0..rounds {
        let prepared: Vec<Vec<Prepared>> = wh_users
            .iter()
            .map(|(uid, tag, _)| {
                (0..per_thread / 2)
                    .map(|n| delivery(format!("evt_bench_{round}_{n}_{tag}"), sub_json(uid, tag, PRICE_ESSENTIAL)))
                    .collect()
            })
            .collect();
        let (run, rows) = load_prepared("POST", &webhook, prepared);
        webhook_runs.push(run);
        webhook_rows.extend(rows);
    }
    let mean = |rows: &[D1Stats]| {
        let n = rows.len().max(1) as f64;
        (
            rows.iter().map(|r| r.0).sum::<usize>() as f64 / n,
            rows.iter().map(|r| r.1).sum::<usize>() as f64 / n,
            rows.iter().map(|r| r.2).sum::<usize>() as f64 / n,
        )
    };
    let wh_mean = mean(&webhook_rows);

    // Entitlements and usage, for the subscribed (essential) users: a first read is a
    // miss (computed from D1, cached after the response), the next ones hits.
    let ent_url = app.url("/api/entitlements");
    let wh_tokens: Vec<String> = wh_users.iter().map(|(_, _, auth)| token(auth)).collect();
    let one = |method: &str, url: &str, t: &str, body: Option<&[u8]>| {
        let r = send(&agent(), method, url, &[("Authorization", &format!("Bearer {t}"))], body);
        assert_eq!(r.status, 200, "{}", r.body);
        let n = |h| r.header(h).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
        (
            n("X-D1-Rows-Read"),
            n("X-D1-Rows-Written"),
            n("X-D1-Round-Trips"),
            r.header("X-Entitlements-Cache").map(str::to_string),
        )
    };
    let ent_miss = one("GET", &ent_url, &wh_tokens[0], None);
    std::thread::sleep(std::time::Duration::from_millis(1500)); // the cache is written after the response
    let ent_hit = one("GET", &ent_url, &wh_tokens[0], None);
    assert_eq!((ent_miss.3.as_deref(), ent_hit.3.as_deref()), (Some("miss"), Some("hit")));
    load(&ent_url, &wh_tokens, concurrency, 20); // every user's entry cached
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let consume_url = app.url("/api/usage/consume");
    let consume_body = |key: String| json!({"feature": "ats_score", "idempotencyKey": key}).to_string().into_bytes();
    let consume_one = one("POST", &consume_url, &wh_tokens[0], Some(&consume_body(support::unique("bench-one"))));
    let (mut ent_runs, mut consume_runs, mut consume_rows) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        ent_runs.push(load(&ent_url, &wh_tokens, concurrency, per_thread));
        let prepared: Vec<Vec<Prepared>> = wh_tokens
            .iter()
            .enumerate()
            .map(|(t, tok)| {
                (0..per_thread / 2)
                    .map(|i| {
                        let headers = vec![("Authorization".to_string(), format!("Bearer {tok}"))];
                        (headers, Some(consume_body(format!("bench-{round}-{t}-{i}"))))
                    })
                    .collect()
            })
            .collect();
        let (run, rows) = load_prepared("POST", &consume_url, prepared);
        consume_runs.push(run);
        consume_rows.extend(rows);
    }
    let consume_mean = mean(&consume_rows);

    // plangate and the JavaScript peer side by side, alternating rounds: recorded-only
    // webhook deliveries and the unrouted 404 path (the per-request fixed cost).
    eprintln!("starting the JavaScript peer …");
    let peer = spawn_peer(&root);
    let unrouted = |n: usize| -> Vec<Vec<Prepared>> { (0..concurrency).map(|_| vec![(Vec::new(), None); n]).collect() };
    let (ours_hook, peer_hook) = (app.url("/api/stripe-webhook"), peer.url("/api/stripe-webhook"));
    let (ours_404, peer_404) = (app.url("/no-such-route"), peer.url("/no-such-route"));
    load_prepared("POST", &ours_hook, recorded_events("warm-ours", concurrency, 20));
    load_prepared("POST", &peer_hook, recorded_events("warm-peer", concurrency, 20));
    let (mut rec_ours, mut rec_peer, mut nf_ours, mut nf_peer) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let n = per_thread / 2;
        rec_ours.push(load_prepared("POST", &ours_hook, recorded_events(&format!("o{round}"), concurrency, n)).0);
        rec_peer.push(load_prepared("POST", &peer_hook, recorded_events(&format!("p{round}"), concurrency, n)).0);
        nf_ours.push(load_expect("GET", &ours_404, unrouted(per_thread), 404).0);
        nf_peer.push(load_expect("GET", &peer_404, unrouted(per_thread), 404).0);
    }
    peer.stop();
    app.stop();
    let median = |runs: &[Run], f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let errors: usize = health
        .iter()
        .chain(plan.iter())
        .chain(webhook_runs.iter())
        .chain(rec_ours.iter())
        .chain(rec_peer.iter())
        .chain(nf_ours.iter())
        .chain(nf_peer.iter())
        .chain(ent_runs.iter())
        .chain(consume_runs.iter())
        .map(|r| r.errors)
        .sum();
    let side = |ours: &[Run], peer: &[Run]| {
        let m = median;
        let (o, p) = (
            (m(ours, |r| r.rps), m(ours, |r| r.p50_ms), m(ours, |r| r.p99_ms)),
            (m(peer, |r| r.rps), m(peer, |r| r.p50_ms), m(peer, |r| r.p99_ms)),
        );
        format!(
            "plangate {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms; peer {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms; plangate ÷ peer: throughput {:.2}×, p50 {:.2}×, p99 {:.2}×",
            o.0, o.1, o.2, p.0, p.1, p.2, o.0 / p.0, o.1 / p.1, o.2 / p.2
        )
    };
    let (w_rps, w50, w99) =
        (median(&webhook_runs, |r| r.rps), median(&webhook_runs, |r| r.p50_ms), median(&webhook_runs, |r| r.p99_ms));
    let (h_rps, p_rps) = (median(&health, |r| r.rps), median(&plan, |r| r.rps));
    let (h50, p50) = (median(&health, |r| r.p50_ms), median(&plan, |r| r.p50_ms));
    let (h99, p99) = (median(&health, |r| r.p99_ms), median(&plan, |r| r.p99_ms));

    let mut out = String::new();
    out += "| metric | value |\n|---|---|\n";
    out += &format!(
        "| wasm (raw / gzip) | {} B / {} B ({:.1} KiB gzip, budget 256 KiB) |\n",
        wasm.len(),
        wasm_gz,
        wasm_gz as f64 / 1024.0
    );
    out += &format!("| js glue build/index.js (raw / gzip) | {} B / {} B |\n", js.len(), js_gz);
    out += &format!("| load | {concurrency} concurrent clients, {per_thread} requests each, median of {rounds} rounds per route |\n");
    out += &format!("| GET /health (baseline) | {h_rps:.0} req/s, p50 {h50:.2} ms, p99 {h99:.2} ms |\n");
    out += &format!("| GET /api/plan/me | {p_rps:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms |\n");
    out += &format!(
        "| plan/me ÷ health | throughput {:.2}×, p50 {:.2}×, p99 {:.2}× |\n",
        p_rps / h_rps,
        p50 / h50,
        p99 / h99
    );
    out += &format!(
        "| D1 rows per /api/plan/me, first request (creates user) | read {}, written {} |\n",
        first.0, first.1
    );
    out += &format!("| D1 rows per /api/plan/me, existing user | read {}, written {} |\n", steady.0, steady.1);
    out +=
        &format!("| D1 round trips per /api/plan/me: first request / existing user | {} / {} |\n", first.2, steady.2);
    out += &format!(
        "| POST /api/stripe-webhook (signed customer.subscription.updated, re-fetch from local fake) | {w_rps:.0} deliveries/s, p50 {w50:.2} ms, p99 {w99:.2} ms ({} per round) |\n",
        concurrency * (per_thread / 2)
    );
    out += &format!(
        "| webhook ÷ health | throughput {:.2}×, p50 {:.2}×, p99 {:.2}× |\n",
        w_rps / h_rps,
        w50 / h50,
        w99 / h99
    );
    out += &format!(
        "| D1 rows per delivery: first for a user / plan change / no change / mean under load | read {}, written {} / read {}, written {} / read {}, written {} / read {:.1}, written {:.1} |\n",
        first_rows[0].0, first_rows[0].1, change_rows[0].0, change_rows[0].1, same_rows[0].0, same_rows[0].1, wh_mean.0, wh_mean.1
    );
    out += &format!(
        "| D1 round trips per delivery: first / plan change / no change / duplicate / recorded-only type / mean under load | {} / {} / {} / {} / {} / {:.1} |\n",
        first_rows[0].2, change_rows[0].2, same_rows[0].2, dup_rows[0].2, recorded_rows[0].2, wh_mean.2
    );
    out += &format!(
        "| KV operations per delivery: on the response path / after it: first for a user, plan change, no change | 0 / {first_kv}, {change_kv}, {same_kv} |\n"
    );
    out += &format!(
        "| D1 rows per duplicate / recorded-only delivery | read {}, written {} / read {}, written {} |\n",
        dup_rows[0].0, dup_rows[0].1, recorded_rows[0].0, recorded_rows[0].1
    );
    let (e_rps, e50, e99) =
        (median(&ent_runs, |r| r.rps), median(&ent_runs, |r| r.p50_ms), median(&ent_runs, |r| r.p99_ms));
    out += &format!(
        "| GET /api/entitlements, cache hit | {e_rps:.0} req/s, p50 {e50:.2} ms, p99 {e99:.2} ms; ÷ health: throughput {:.2}×, p50 {:.2}×, p99 {:.2}× |\n",
        e_rps / h_rps, e50 / h50, e99 / h99
    );
    out += &format!(
        "| D1 per GET /api/entitlements: cache miss / cache hit | read {}, written {}, round trips {} / read {}, written {}, round trips {} |\n",
        ent_miss.0, ent_miss.1, ent_miss.2, ent_hit.0, ent_hit.1, ent_hit.2
    );
    let (c_rps, c50, c99) =
        (median(&consume_runs, |r| r.rps), median(&consume_runs, |r| r.p50_ms), median(&consume_runs, |r| r.p99_ms));
    out += &format!(
        "| POST /api/usage/consume (a new idempotency key each) | {c_rps:.0} req/s, p50 {c50:.2} ms, p99 {c99:.2} ms; ÷ health: throughput {:.2}×, p50 {:.2}×, p99 {:.2}× |\n",
        c_rps / h_rps, c50 / h50, c99 / h99
    );
    out += &format!(
        "| D1 per consume: one / mean under load | read {}, written {}, round trips {} / read {:.1}, written {:.1}, round trips {:.1} |\n",
        consume_one.0, consume_one.1, consume_one.2, consume_mean.0, consume_mean.1, consume_mean.2
    );
    out += &format!(
        "| recorded-only webhook (signed product.created, new id each) vs the JS peer | {} |\n",
        side(&rec_ours, &rec_peer)
    );
    out += &format!("| unrouted 404 vs the JS peer | {} |\n", side(&nf_ours, &nf_peer));
    out += &format!("| unexpected answers during load | {errors} |\n");
    println!("{out}");
    let report = root.join("target/bench-report.md");
    let _ = std::fs::write(&report, &out);
    eprintln!("(also written to {})", report.display());

    if errors > 0 {
        eprintln!("error: {errors} requests failed during the load");
        std::process::exit(1);
    }
    if wasm_gz > WASM_GZIP_BUDGET {
        eprintln!("error: wasm gzip size {wasm_gz} B is over the {WASM_GZIP_BUDGET} B budget");
        std::process::exit(1);
    }
}
