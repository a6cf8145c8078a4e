//! The Stripe stand-in of `make dev`: the stateful fake the end-to-end tests use,
//! served on loopback with pages a browser can use, so a whole upgrade can be watched
//! without a Stripe account. Built natively (`cargo build --example stripe-standin`),
//! never linked into the Worker.
//!
//! - `/v1/…`: the Stripe API subset plangate calls (customers, Checkout sessions,
//!   subscriptions, schedules, the portal, payment intents, invoices, the Events API).
//! - `/c/pay/{session}`: the Checkout page, with "Pay" and "Cancel". Paying creates the
//!   subscription (trialing when the session has trial days) or the one-off payment,
//!   and delivers the signed webhooks Stripe would send to the Worker's
//!   `/api/stripe-webhook`, then goes back to the session's `success_url`.
//! - `/p/session/{session}`: the billing portal: cancel at the period end, or undo it.
//! - `/`: every subscription, with "Advance to the period end" (renewal, a scheduled
//!   downgrade taking effect, a cancellation ending it), and the webhooks delivered.
//!
//! Changes made through the API (an in-place upgrade, a trial ended now, a schedule)
//! are followed by the `customer.subscription.updated` webhook, as with Stripe. A
//! delivery that fails is listed by the Events API, so the cron's reconciliation
//! finds it.
//!
//! `stripe-standin [--port 12111] [--worker http://127.0.0.1:8787] [--webhook-secret whsec_…]`
//! (the secret defaults to `STRIPE_WEBHOOK_SECRET` of the environment or `.dev.vars`).

#![allow(clippy::disallowed_methods)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::stripe_fake::{Recorded, StripeFake};

struct StandIn {
    fake: StripeFake,
    worker: String,
    secret: String,
    /// The latest deliveries, newest last: (event type, event id, HTTP status or error).
    log: Mutex<Vec<(String, String, String)>>,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn dev_vars_secret() -> Option<String> {
    let text = std::fs::read_to_string(".dev.vars").ok()?;
    text.lines().find_map(|l| l.strip_prefix("STRIPE_WEBHOOK_SECRET=")).map(|v| v.trim().to_string())
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn date(t: Option<i64>) -> String {
    let Some(t) = t else { return "—".into() };
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm), UTC.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
}

/// `price_pro_dev` → `pro`.
fn price_label(price: &str) -> String {
    let p = price.strip_prefix("price_").unwrap_or(price);
    p.rsplit_once('_').map_or(p, |(name, _)| name).replace('_', " ")
}

impl StandIn {
    /// Signs `event` and POSTs it to the Worker; a failed delivery is left to the
    /// Events API (the cron's reconciliation lists it).
    fn deliver(&self, event: &Value) {
        let body = event.to_string();
        let signature = plangate::stripe::signature::sign_for_test(body.as_bytes(), &self.secret, now());
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
        let result = agent
            .post(&format!("{}/api/stripe-webhook", self.worker))
            .set("Content-Type", "application/json")
            .set("Stripe-Signature", &signature)
            .send_string(&body);
        let outcome = match &result {
            Ok(r) => r.status().to_string(),
            Err(ureq::Error::Status(code, _)) => code.to_string(),
            Err(e) => format!("not delivered: {e}"),
        };
        let delivered = matches!(&result, Ok(r) if r.status() < 300);
        if !delivered {
            let mut undelivered = event.clone();
            undelivered["created"] = json!(now());
            self.fake.add_undelivered(undelivered);
        }
        eprintln!("stripe-standin: {} {} → {outcome}", event["type"].as_str().unwrap_or("?"), event["id"]);
        let mut log = self.log.lock().unwrap();
        log.push((
            event["type"].as_str().unwrap_or("?").to_string(),
            event["id"].as_str().unwrap_or("?").to_string(),
            outcome,
        ));
        let excess = log.len().saturating_sub(50);
        log.drain(..excess);
    }

    /// After an API call that changed a subscription, the webhook Stripe would send;
    /// a moment later, as Stripe does (the API's answer arrives first).
    fn follow_api_change(self: &Arc<Self>, rec: &Recorded, status: u16, answer: &Value) {
        if status >= 300 || rec.method == "GET" {
            return;
        }
        let segs: Vec<&str> = rec.path.trim_start_matches('/').split('/').collect();
        let subscription = match segs.as_slice() {
            ["v1", "subscriptions", id] => Some(id.to_string()),
            ["v1", "subscription_schedules", ..] => answer["subscription"].as_str().map(str::to_string),
            _ => None,
        };
        let Some(sub) = subscription.and_then(|id| self.fake.subscription(&id)) else { return };
        let kind =
            if sub["status"] == "canceled" { "customer.subscription.deleted" } else { "customer.subscription.updated" };
        let event = self.fake.event_about(kind, sub);
        let me = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            me.deliver(&event);
        });
    }

    /// The customer pays the session: its events, in Stripe's order, delivered.
    fn pay(&self, session_id: &str) -> Result<String, String> {
        let session = self.fake.session(session_id).ok_or("no such checkout session")?;
        if session["status"] != "open" {
            return Err(format!("this checkout session is {}", session["status"].as_str().unwrap_or("closed")));
        }
        let mut events = if session["mode"] == "payment" {
            self.fake.complete_payment_checkout(session_id)
        } else {
            self.fake.complete_checkout(session_id)
        };
        if session["mode"] != "payment" {
            let sub = events[1]["data"]["object"].clone();
            let trialing = sub["status"] == "trialing";
            let sub_id = sub["id"].as_str().unwrap_or_default().to_string();
            events.push(self.fake.invoice_paid(&sub_id, if trialing { 0 } else { 1000 }, "subscription_create"));
        }
        for event in &events {
            self.deliver(event);
        }
        Ok(session["success_url"].as_str().unwrap_or("/").to_string())
    }
}

// ---------------------------------------------------------------------------------
// Pages

fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>{title} · Stripe stand-in</title><style>
body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#1b1f24;background:#f6f9fc}}
.card{{background:#fff;border:1px solid #d8dde3;border-radius:.75rem;padding:1rem 1.25rem;margin:1rem 0}}
button{{font:inherit;min-height:44px;padding:.5rem 1.25rem;border-radius:.5rem;border:1px solid #635bff;background:#635bff;color:#fff;cursor:pointer;margin:.25rem .25rem .25rem 0}}
button.secondary{{background:#fff;color:#635bff}} .muted{{color:#5b6470}} :focus-visible{{outline:3px solid #f59e0b;outline-offset:2px}}
form{{display:inline}} table{{border-collapse:collapse;width:100%}} td,th{{text-align:left;padding:.3rem;border-bottom:1px solid #e3e8ee;font-size:.9rem}}
.badge{{display:inline-block;background:#fff4e0;color:#a15c00;border-radius:1rem;padding:.1rem .6rem;font-size:.8rem}}
</style></head><body><p class="badge">Stripe stand-in · development only · no real payment</p>{body}</body></html>"#
    )
}

fn checkout_page(session: &Value) -> String {
    let id = escape(session["id"].as_str().unwrap_or_default());
    let what = if session["mode"] == "payment" {
        let credits = session["payment_intent_data"]["metadata"]["credits"].as_str().map(|c| format!(" ({c} credits)"));
        format!(
            "Credit pack <strong>{}</strong>{} — {:.2} USD, once",
            escape(&price_label(session["price"].as_str().unwrap_or_default())),
            escape(&credits.unwrap_or_default()),
            session["amount_total"].as_i64().unwrap_or(0) as f64 / 100.0
        )
    } else {
        let trial = session["trial_period_days"].as_i64().filter(|d| *d > 0);
        format!(
            "Subscription <strong>{}</strong> — 10.00 USD a month{}",
            escape(&price_label(session["price"].as_str().unwrap_or_default())),
            trial.map(|d| format!(", <strong>{d}-day free trial</strong> first")).unwrap_or_default()
        )
    };
    let state = if session["status"] == "open" {
        format!(
            r#"<form method="post" action="/c/pay/{id}/pay"><button type="submit" autofocus>Pay</button></form>
<form method="post" action="/c/pay/{id}/cancel"><button type="submit" class="secondary">Cancel</button></form>"#
        )
    } else {
        format!("<p>This checkout is {}.</p>", escape(session["status"].as_str().unwrap_or("closed")))
    };
    page(
        "Checkout",
        &format!(
            r#"<main class="card"><h1>Checkout</h1><p>{what}</p><p class="muted">Customer {}</p>{state}</main>"#,
            escape(session["customer"].as_str().unwrap_or_default())
        ),
    )
}

fn portal_page(fake: &StripeFake, portal: &Value) -> String {
    let id = escape(portal["id"].as_str().unwrap_or_default());
    let customer = portal["customer"].as_str().unwrap_or_default();
    let subs: Vec<String> = fake
        .subscriptions_of(customer)
        .iter()
        .filter(|s| s["status"] != "canceled" && s["status"] != "incomplete_expired")
        .map(|s| {
            let sid = escape(s["id"].as_str().unwrap_or_default());
            let pending = s["cancel_at_period_end"] == true;
            let action = if pending {
                format!(r#"<form method="post" action="/p/session/{id}/renew/{sid}"><button type="submit">Don't cancel</button></form>"#)
            } else {
                format!(r#"<form method="post" action="/p/session/{id}/cancel/{sid}"><button type="submit" class="secondary">Cancel plan</button></form>"#)
            };
            format!(
                "<div class=\"card\"><p><strong>{}</strong> · {}{}</p><p class=\"muted\">Current period ends {}</p>{action}</div>",
                escape(&price_label(s["items"]["data"][0]["price"]["id"].as_str().unwrap_or_default())),
                escape(s["status"].as_str().unwrap_or_default()),
                if pending { " · cancels at the period end" } else { "" },
                date(s["current_period_end"].as_i64())
            )
        })
        .collect();
    let back = escape(portal["return_url"].as_str().unwrap_or("/"));
    page(
        "Billing",
        &format!(
            r#"<main><h1>Billing</h1>{}<p><a href="{back}">Return to the site</a></p></main>"#,
            if subs.is_empty() { "<p>No subscription.</p>".to_string() } else { subs.join("") }
        ),
    )
}

fn home_page(me: &StandIn) -> String {
    let rows: Vec<String> = me
        .fake
        .all_subscriptions()
        .iter()
        .map(|s| {
            let sid = escape(s["id"].as_str().unwrap_or_default());
            format!(
                r#"<tr><td>{sid}</td><td>{}</td><td>{}{}</td><td>{}</td><td><form method="post" action="/advance/{sid}"><button type="submit" class="secondary">Advance to the period end</button></form></td></tr>"#,
                escape(&price_label(s["items"]["data"][0]["price"]["id"].as_str().unwrap_or_default())),
                escape(s["status"].as_str().unwrap_or_default()),
                if s["cancel_at_period_end"] == true { " (cancels)" } else { "" },
                date(s["current_period_end"].as_i64()),
            )
        })
        .collect();
    let log: Vec<String> = me
        .log
        .lock()
        .unwrap()
        .iter()
        .rev()
        .map(|(kind, id, outcome)| {
            format!("<tr><td>{}</td><td>{}</td><td>{}</td></tr>", escape(kind), escape(id), escape(outcome))
        })
        .collect();
    page(
        "Stand-in",
        &format!(
            r#"<main><h1>Stripe stand-in</h1><p class="muted">Webhooks go to {}/api/stripe-webhook.</p>
<h2>Subscriptions</h2><table><tr><th>id</th><th>plan</th><th>status</th><th>period ends</th><th></th></tr>{}</table>
<h2>Webhooks delivered</h2><table><tr><th>type</th><th>event</th><th>answer</th></tr>{}</table></main>"#,
            escape(&me.worker),
            rows.join(""),
            log.join("")
        ),
    )
}

// ---------------------------------------------------------------------------------
// Server

fn respond(req: tiny_http::Request, status: u16, content_type: &str, body: String) {
    let header = format!("Content-Type: {content_type}").parse::<tiny_http::Header>().expect("a header");
    let _ = req.respond(tiny_http::Response::from_string(body).with_status_code(status).with_header(header));
}

fn redirect(req: tiny_http::Request, to: &str) {
    let header = format!("Location: {to}").parse::<tiny_http::Header>().expect("a header");
    let _ = req.respond(tiny_http::Response::empty(303).with_header(header));
}

fn handle(me: &Arc<StandIn>, mut req: tiny_http::Request) {
    let mut body = String::new();
    let _ = req.as_reader().read_to_string(&mut body);
    let url = req.url().to_string();
    let (path, query) =
        url.split_once('?').map(|(p, q)| (p.to_string(), q.to_string())).unwrap_or((url.clone(), String::new()));
    let method = req.method().to_string();
    if path.starts_with("/v1/") {
        let headers = req.headers().iter().map(|h| (h.field.to_string(), h.value.to_string())).collect();
        let rec = Recorded { method, path, query, headers, body };
        let (status, answer) = me.fake.answer(rec.clone());
        me.follow_api_change(&rec, status, &answer);
        return respond(req, status, "application/json", answer.to_string());
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let html = "text/html; charset=utf-8";
    match (method.as_str(), segs.as_slice()) {
        ("GET", [""]) => respond(req, 200, html, home_page(me)),
        ("GET", ["c", "pay", id]) => match me.fake.session(id) {
            Some(s) => respond(req, 200, html, checkout_page(&s)),
            None => respond(req, 404, html, page("Checkout", "<p>No such checkout session.</p>")),
        },
        ("POST", ["c", "pay", id, "pay"]) => match me.pay(id) {
            Ok(to) => redirect(req, &to),
            Err(why) => respond(req, 409, html, page("Checkout", &format!("<p>{}</p>", escape(&why)))),
        },
        ("POST", ["c", "pay", id, "cancel"]) => match me.fake.session(id) {
            Some(s) => redirect(req, s["cancel_url"].as_str().unwrap_or("/")),
            None => respond(req, 404, html, page("Checkout", "<p>No such checkout session.</p>")),
        },
        ("GET", ["p", "session", id]) => match me.fake.portal_session(id) {
            Some(p) => respond(req, 200, html, portal_page(&me.fake, &p)),
            None => respond(req, 404, html, page("Billing", "<p>No such portal session.</p>")),
        },
        ("POST", ["p", "session", id, change @ ("cancel" | "renew"), sub]) => {
            let mine = me
                .fake
                .portal_session(id)
                .is_some_and(|p| me.fake.subscription(sub).is_some_and(|s| s["customer"] == p["customer"]));
            if !mine {
                return respond(req, 404, html, page("Billing", "<p>No such subscription here.</p>"));
            }
            if let Some(event) = me.fake.set_cancel_at_period_end(sub, *change == "cancel") {
                me.deliver(&event);
            }
            redirect(req, &format!("/p/session/{id}"));
        }
        ("POST", ["advance", sub]) => {
            if me.fake.subscription(sub).is_none() {
                return respond(req, 404, html, page("Stand-in", "<p>No such subscription.</p>"));
            }
            let event = me.fake.advance_period(sub);
            me.deliver(&event);
            let after = me.fake.subscription(sub).unwrap_or_default();
            if after["status"] == "active" {
                let invoice = me.fake.invoice_paid(sub, 1000, "subscription_cycle");
                me.deliver(&invoice);
            }
            redirect(req, "/");
        }
        _ => respond(req, 404, html, page("Not found", "<p>Nothing here.</p>")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = arg(&args, "--port").and_then(|p| p.parse().ok()).unwrap_or(12111);
    let worker = arg(&args, "--worker").unwrap_or_else(|| "http://127.0.0.1:8787".into());
    let secret = arg(&args, "--webhook-secret")
        .or_else(|| std::env::var("STRIPE_WEBHOOK_SECRET").ok())
        .or_else(dev_vars_secret)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            eprintln!("stripe-standin: no webhook secret (--webhook-secret, STRIPE_WEBHOOK_SECRET or .dev.vars)");
            std::process::exit(2)
        });
    let server = match tiny_http::Server::http(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stripe-standin: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1)
        }
    };
    let base = format!("http://127.0.0.1:{port}");
    let me = Arc::new(StandIn {
        fake: StripeFake::detached(&base),
        worker: worker.trim_end_matches('/').to_string(),
        secret: secret.split(',').next_back().unwrap_or_default().trim().to_string(),
        log: Mutex::new(Vec::new()),
    });
    eprintln!("stripe-standin on {base} (webhooks to {}/api/stripe-webhook)", me.worker);
    for req in server.incoming_requests() {
        let me = me.clone();
        std::thread::spawn(move || handle(&me, req));
    }
}
