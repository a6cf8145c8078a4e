//! The legacy credit import (`POST /api/admin/migrations/credits`): a generated legacy
//! data set of 1,000 users imported with zero difference, re-runs that change nothing,
//! the three-call flow, and malformed files refused with their line.
//!
//! The staged files are global state: these tests run on an app of their own, one at
//! a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::{agent, get, send, token, unique, App, Resp};
use crate::ADMIN_TOKEN;

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| App::spawn(crate::stripe_options(&crate::shared().stripe)))
}

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn post(app: &App, query: &str, content_type: &str, body: &[u8]) -> Resp {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", content_type)];
    send(&agent(), "POST", &app.url(&format!("/api/admin/migrations/credits{query}")), &headers, Some(body))
}

fn post_file(app: &App, file: &str, csv: &str) -> Resp {
    post(app, &format!("?file={file}"), "text/csv", csv.as_bytes())
}

/// Stages the three files, then commits: the answer of the commit.
fn import(app: &App, files: &[(&str, &str)], dry_run: bool) -> Resp {
    for (file, csv) in files {
        let r = post_file(app, file, csv);
        assert_eq!(r.status, 200, "{file}: {}", r.body);
    }
    post(app, &format!("?commit=true&dryRun={dry_run}"), "text/plain", b"")
}

/// A CSV field, quoted when it needs to be (as PostgreSQL writes it).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn line(fields: &[&str]) -> String {
    fields.iter().map(|f| field(f)).collect::<Vec<_>>().join(",") + "\r\n"
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

const USERS_HEADER: &str = "id,email,credits_balance,stripe_customer_id,created_at,updated_at\r\n";
const PAYMENTS_HEADER: &str = "id,user_id,stripe_payment_intent_id,amount,status,created_at,updated_at\r\n";
const TX_HEADER: &str = "id,user_id,delta,reason,stripe_event_id,metadata,created_at\r\n";

/// A small deterministic generator (the data set is the same on every run).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A generated legacy data set and the plangate side it is matched against.
struct DataSet {
    tag: String,
    users: String,
    payments: String,
    transactions: String,
    /// Legacy user id → (its plangate user id when it can be matched, balance).
    legacy: BTreeMap<String, (Option<String>, i64)>,
    /// plangate user id → credits it had before the import.
    before: BTreeMap<String, i64>,
    /// Legacy transactions and payments of matched users; balance rows expected.
    matched_transactions: usize,
    matched_payments: usize,
    balance_rows: usize,
}

/// 1,000 legacy users: 400 found by Stripe customer id, 400 by a verified customer
/// record (email differing in case and spaces), 200 unmatched (unknown Stripe id and
/// email, an unverified customer record, an email two users verified). User 0 is the
/// documented case: 200 credits, an empty ledger, one paid payment.
fn generate(app: &App) -> DataSet {
    let tag = unique("imp").replace('-', "");
    let mut rng = Lcg(7);
    let (mut users, mut payments, mut transactions) =
        (USERS_HEADER.to_string(), PAYMENTS_HEADER.to_string(), TX_HEADER.to_string());
    let mut legacy = BTreeMap::new();
    let mut before = BTreeMap::new();
    let (mut matched_transactions, mut matched_payments, mut balance_rows) = (0, 0, 0);
    let mut sql_users = Vec::new();
    let mut sql_customers = Vec::new();
    let mut sql_ledger = Vec::new();
    let now = crate::support::now();
    for i in 0..1000 {
        let lid = format!("{tag}-L{i}");
        let email = format!("User{i}@Legacy-{tag}.Example.test");
        let user_id = format!("usr_{tag}_{i}");
        let mut stripe = String::new();
        let matched = match i % 10 {
            0..=3 => {
                stripe = format!("cus_{tag}_{i}");
                sql_users.push(format!("('{user_id}', 'auth-{tag}-{i}', '{stripe}')"));
                true
            }
            4..=7 => {
                if i % 3 == 0 {
                    stripe = format!("cus_{tag}_gone_{i}");
                }
                sql_users.push(format!("('{user_id}', 'auth-{tag}-{i}', NULL)"));
                let hash = sha256_hex(&email.to_lowercase());
                sql_customers.push(format!("('cust_{tag}_{i}', '{user_id}', '{hash}', 'legacy')"));
                true
            }
            8 => {
                // An unverified customer record with the email: no match.
                let hash = sha256_hex(&email.to_lowercase());
                sql_customers.push(format!("('cust_{tag}_{i}', NULL, '{hash}', 'legacy')"));
                false
            }
            _ => {
                stripe = format!("cus_{tag}_unknown_{i}");
                if i == 9 {
                    // Verified by two users: ambiguous, no match.
                    let hash = sha256_hex(&email.to_lowercase());
                    for k in ["a", "b"] {
                        sql_users.push(format!("('usr_{tag}_twin{k}', 'auth-{tag}-twin{k}', NULL)"));
                        sql_customers.push(format!("('cust_{tag}_twin{k}', 'usr_{tag}_twin{k}', '{hash}', 'legacy')"));
                    }
                }
                false
            }
        };
        if matched && i % 97 == 5 {
            before.insert(user_id.clone(), 25);
            sql_ledger
                .push(format!("('ct_{tag}_pre{i}', '{user_id}', 25, 'purchase', 'test:{tag}:{i}', NULL, NULL, {now})"));
        }
        let mut sum = 0i64;
        let n_tx = if i == 0 { 0 } else { rng.next(5) };
        for k in 0..n_tx {
            let (reason, delta) = match rng.next(6) {
                0 => ("purchase", 100),
                1 => ("spend", -10),
                2 => ("grant", 20),
                3 => ("refund", -5),
                4 => ("bonus", 15),
                _ => ("PURCHASE", 50),
            };
            let delta = if sum + delta < 0 { -delta } else { delta };
            sum += delta;
            let meta = format!("{{\"note\": \"order {i}-{k}, \\\"quoted\\\"\\nsecond line\", \"n\": {k}}}");
            let event = if k % 2 == 0 { format!("evt_{tag}_{i}_{k}") } else { String::new() };
            let created = ["2024-03-01 12:00:00.123+00", "2024-03-01T12:00:00Z", "1709294400", ""][k as usize % 4];
            transactions.push_str(&line(&[
                &format!("{tag}-T{i}-{k}"),
                &lid,
                &delta.to_string(),
                reason,
                &event,
                &meta,
                created,
            ]));
            if matched {
                matched_transactions += 1;
            }
        }
        let balance = if i == 0 {
            200
        } else if rng.next(3) == 0 {
            sum
        } else {
            (sum + rng.next(60) as i64 - 20).max(0)
        };
        if matched && balance != sum {
            balance_rows += 1;
        }
        for k in 0..(if i == 0 { 1 } else { rng.next(3) }) {
            let pi = if k == 1 { String::new() } else { format!("pi_{tag}_{i}_{k}") };
            let status = if rng.next(4) == 0 { "FAILED" } else { "PAID" };
            payments.push_str(&line(&[
                &format!("{tag}-P{i}-{k}"),
                &lid,
                &pi,
                "500",
                status,
                "2024-03-01 12:00:00+00",
                "2024-03-01 12:00:00+00",
            ]));
            if matched {
                matched_payments += 1;
            }
        }
        let shown = if i % 2 == 0 { format!("  {email} ") } else { email.to_uppercase() };
        users.push_str(&line(&[&lid, &shown, &balance.to_string(), &stripe, "2023-01-01 00:00:00+00", ""]));
        legacy.insert(lid, (matched.then_some(user_id), balance));
    }
    // Rows of users missing from the users export: reported, never imported.
    for k in 0..5 {
        transactions.push_str(&line(&[
            &format!("{tag}-T-ghost-{k}"),
            &format!("{tag}-ghost"),
            "10",
            "grant",
            "",
            "",
            "",
        ]));
    }
    payments.push_str(&line(&[&format!("{tag}-P-ghost"), &format!("{tag}-ghost"), "", "100", "PAID", "", ""]));
    app.sql_exec(&format!(
        "INSERT INTO users (id, auth_id, stripe_customer_id, plan_updated_at, created_at, updated_at) \
         SELECT column1, column2, column3, {now}, {now}, {now} FROM (VALUES {});\n\
         INSERT INTO customers (id, user_id, email_hash, source) VALUES {};\n\
         INSERT INTO credit_transactions (id, user_id, delta, reason, source_key, stripe_event_id, metadata, created_at) VALUES {};\n",
        sql_users.join(", "),
        sql_customers.join(", "),
        sql_ledger.join(", ")
    ));
    DataSet { tag, users, payments, transactions, legacy, before, matched_transactions, matched_payments, balance_rows }
}

fn ledger_of(app: &App, tag: &str) -> BTreeMap<String, i64> {
    app.sql(&format!(
        "SELECT user_id, SUM(delta) AS balance FROM credit_transactions WHERE user_id LIKE 'usr_{tag}_%' GROUP BY user_id"
    ))
    .into_iter()
    .map(|r| (r["user_id"].as_str().unwrap().to_string(), r["balance"].as_i64().unwrap()))
    .collect()
}

fn legacy_rows(app: &App, tag: &str) -> i64 {
    app.count(&format!(
        "SELECT COUNT(*) FROM credit_transactions WHERE source_key LIKE 'legacy:{tag}-%' OR source_key LIKE 'legacy-balance:{tag}-%'"
    ))
}

fn check_totals(r: &Value, d: &DataSet) {
    let total: i64 = d.legacy.values().map(|(_, b)| b).sum();
    let matched: i64 = d.legacy.values().filter(|(u, _)| u.is_some()).map(|(_, b)| b).sum();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["difference"], 0, "{r}");
    assert_eq!(r["legacyCredits"], total);
    assert_eq!(r["matchedCredits"], matched);
    assert_eq!(r["importedCredits"], matched);
    assert_eq!(r["unmatchedCredits"], total - matched);
    assert_eq!(r["users"]["total"], 1000);
    assert_eq!((r["users"]["matched"].as_i64(), r["users"]["unmatched"].as_i64()), (Some(800), Some(200)));
    assert_eq!(
        (r["users"]["byStripeCustomer"].as_i64(), r["users"]["byVerifiedEmail"].as_i64()),
        (Some(400), Some(400))
    );
    assert_eq!(r["ledger"]["rows"], d.matched_transactions + d.balance_rows);
    assert_eq!(r["ledger"]["balanceRows"], d.balance_rows);
    assert_eq!(r["transactions"]["ofMatchedUsers"], d.matched_transactions);
    assert_eq!(r["transactions"]["orphans"], 5);
    assert_eq!(r["payments"]["ofMatchedUsers"], d.matched_payments);
    assert_eq!(r["payments"]["orphans"], 1);
    assert_eq!(r["orphanUserIds"], serde_json::json!([format!("{}-ghost", d.tag)]));
    let matched_ids: BTreeMap<String, String> = r["matched"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["legacyId"].as_str().unwrap().to_string(), m["userId"].as_str().unwrap().to_string()))
        .collect();
    let expected: BTreeMap<String, String> =
        d.legacy.iter().filter_map(|(l, (u, _))| Some((l.clone(), u.clone()?))).collect();
    assert_eq!(matched_ids, expected);
    let unmatched: BTreeSet<&str> =
        r["unmatched"].as_array().unwrap().iter().map(|u| u["legacyId"].as_str().unwrap()).collect();
    let expected: BTreeSet<&str> = d.legacy.iter().filter(|(_, (u, _))| u.is_none()).map(|(l, _)| l.as_str()).collect();
    assert_eq!(unmatched, expected, "every unmatched user is listed");
}

#[test]
fn a_generated_legacy_data_set_of_1000_users_is_imported_with_zero_difference_and_a_rerun_changes_nothing() {
    let app = app();
    let _one_at_a_time = serial();
    let d = generate(app);
    let files = [
        ("users", d.users.as_str()),
        ("payments", d.payments.as_str()),
        ("credit_transactions", d.transactions.as_str()),
    ];

    // A dry run plans everything and writes nothing.
    let r = import(app, &files, true);
    assert_eq!(r.status, 200, "{}", r.body);
    let plan = r.json();
    check_totals(&plan, &d);
    assert_eq!(plan["dryRun"], true);
    assert_eq!(plan["written"]["ledgerRows"], d.matched_transactions + d.balance_rows);
    assert_eq!(plan["written"]["balanceRows"], d.balance_rows);
    assert_eq!(legacy_rows(app, &d.tag), 0, "a dry run imports nothing");
    assert_eq!(
        app.count(&format!("SELECT COUNT(*) FROM stripe_payments WHERE last_event_id LIKE 'legacy:{}-%'", d.tag)),
        0
    );

    // The import, from the files the dry run staged.
    let r = post(app, "?commit=true&dryRun=false", "text/plain", b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let done = r.json();
    check_totals(&done, &d);
    assert_eq!(done["dryRun"], false);
    assert_eq!(done["written"], plan["written"], "the import wrote what the dry run planned");
    assert_eq!(legacy_rows(app, &d.tag) as usize, d.matched_transactions + d.balance_rows);
    assert_eq!(done["payments"]["recorded"], d.matched_payments);
    assert_eq!(
        app.count(&format!("SELECT COUNT(*) FROM stripe_payments WHERE last_event_id LIKE 'legacy:{}-%'", d.tag))
            as usize,
        d.matched_payments
    );

    // Every matched user's balance is their legacy balance (on top of what they had).
    let ledger = ledger_of(app, &d.tag);
    for (lid, (user, balance)) in &d.legacy {
        if let Some(u) = user {
            let want = balance + d.before.get(u).copied().unwrap_or(0);
            assert_eq!(ledger.get(u).copied().unwrap_or(0), want, "{lid} → {u}");
        }
    }
    assert!(!ledger.keys().any(|u| u.contains("twin")), "an ambiguous email imports nothing");

    // The documented case: 200 credits and an empty ledger → one migration row of 200.
    let u0 = format!("usr_{}_0", d.tag);
    let rows = app.sql(&format!("SELECT delta, reason, source_key FROM credit_transactions WHERE user_id = '{u0}'"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["delta"], 200);
    assert_eq!(rows[0]["reason"], "migration");
    assert_eq!(rows[0]["source_key"], format!("legacy-balance:{}-L0", d.tag));
    let r = get(&app.url("/api/credits"), Some(&token(&format!("auth-{}-0", d.tag))));
    assert_eq!((r.status, r.json()["balance"].as_i64()), (200, Some(200)), "{}", r.body);

    // Reasons map onto the ledger's; the legacy reason and metadata are kept.
    let bonus = app.sql(&format!(
        "SELECT reason, metadata, created_at FROM credit_transactions WHERE source_key LIKE 'legacy:{}-%' \
         AND json_extract(metadata, '$.legacyReason') = 'bonus' LIMIT 1",
        d.tag
    ));
    assert_eq!(bonus[0]["reason"], "migration");
    let meta: Value = serde_json::from_str(bonus[0]["metadata"].as_str().unwrap()).unwrap();
    assert!(meta["legacyMetadata"]["note"].as_str().unwrap().contains(", \"quoted\"\nsecond line"), "{meta}");
    let upper = app.count(&format!(
        "SELECT COUNT(*) FROM credit_transactions WHERE source_key LIKE 'legacy:{}-%' \
         AND json_extract(metadata, '$.legacyReason') = 'PURCHASE' AND reason <> 'purchase'",
        d.tag
    ));
    assert_eq!(upper, 0);
    let dated = app.count(&format!(
        "SELECT COUNT(*) FROM credit_transactions WHERE source_key LIKE 'legacy:{}-%' \
         AND json_extract(metadata, '$.legacyCreatedAt') IN ('2024-03-01 12:00:00.123+00', '2024-03-01T12:00:00Z') \
         AND created_at <> 1709294400",
        d.tag
    ));
    assert_eq!(dated, 0, "legacy times are kept as the rows' times");

    // The import consumed the staged files.
    let r = post(app, "?commit=true&dryRun=false", "text/plain", b"");
    assert_eq!((r.status, crate::error_code(&r.json())), (409, "FILES_MISSING"), "{}", r.body);

    // Re-running with the same files (planned, then imported) imports nothing twice.
    for dry_run in [true, false] {
        let rerun = import(app, &files, dry_run);
        assert_eq!(rerun.status, 200, "{}", rerun.body);
        let again = rerun.json();
        check_totals(&again, &d);
        assert_eq!(again["written"], serde_json::json!({"ledgerRows": 0, "balanceRows": 0, "payments": 0}));
        assert_eq!(legacy_rows(app, &d.tag) as usize, d.matched_transactions + d.balance_rows);
        assert_eq!(ledger_of(app, &d.tag), ledger);
    }
}

#[test]
fn three_calls_stage_the_files_and_a_final_commit_imports_them() {
    let app = app();
    let _one_at_a_time = serial();
    let tag = unique("three").replace('-', "");
    let now = crate::support::now();
    app.sql_exec(&format!(
        "INSERT INTO users (id, auth_id, stripe_customer_id, plan_updated_at, created_at, updated_at) \
         VALUES ('usr_{tag}', 'auth-{tag}', 'cus_{tag}', {now}, {now}, {now});"
    ));
    let users = format!("{USERS_HEADER}{tag}-u,a@x.test,70,cus_{tag},,\r\n{tag}-v,b@x.test,5,,,\r\n");
    let payments = format!("{PAYMENTS_HEADER}{tag}-p,{tag}-u,pi_{tag},900,PAID,,\r\n");
    let transactions = format!("{TX_HEADER}{tag}-t,{tag}-u,100,purchase,,,\r\n{tag}-s,{tag}-u,-40,spend,,,\r\n");

    // Start from nothing staged (other tests leave files staged by dry runs).
    app.sql_exec("DELETE FROM legacy_credit_files; DELETE FROM legacy_users; DELETE FROM legacy_payments; DELETE FROM legacy_credit_transactions;");

    let r = post_file(app, "users", &users);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"ok": true, "staged": {"users": 2}, "missing": ["payments", "credit_transactions"]})
    );
    let r = post(app, "?commit=true&dryRun=false", "text/plain", b"");
    assert_eq!((r.status, crate::error_code(&r.json())), (409, "FILES_MISSING"), "{}", r.body);
    assert_eq!(r.json()["missing"], serde_json::json!(["payments", "credit_transactions"]));
    let r = post_file(app, "payments", &payments);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post_file(app, "credit_transactions", &transactions);
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["staged"], serde_json::json!({"users": 2, "payments": 1, "credit_transactions": 2}));
    assert_eq!(body["missing"], serde_json::json!([]));
    assert!(body.get("difference").is_none(), "uploading a file does not import");
    assert_eq!(app.count(&format!("SELECT COUNT(*) FROM credit_transactions WHERE user_id = 'usr_{tag}'")), 0);

    let r = post(app, "?commit=true&dryRun=false", "text/plain", b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let done = r.json();
    assert_eq!((done["legacyCredits"].as_i64(), done["importedCredits"].as_i64()), (Some(75), Some(70)));
    assert_eq!((done["difference"].as_i64(), done["unmatchedCredits"].as_i64()), (Some(0), Some(5)));
    assert_eq!(done["unmatched"][0]["legacyId"], format!("{tag}-v"));
    assert_eq!(done["written"], serde_json::json!({"ledgerRows": 3, "balanceRows": 1, "payments": 1}));
    let rows = app.sql(&format!(
        "SELECT delta, reason, source_key FROM credit_transactions WHERE user_id = 'usr_{tag}' ORDER BY source_key"
    ));
    let got: Vec<(i64, &str, &str)> = rows
        .iter()
        .map(|r| (r["delta"].as_i64().unwrap(), r["reason"].as_str().unwrap(), r["source_key"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            (10, "migration", format!("legacy-balance:{tag}-u").as_str()),
            (-40, "spend", format!("legacy:{tag}-s").as_str()),
            (100, "purchase", format!("legacy:{tag}-t").as_str()),
        ]
    );
    let paid = app.sql(&format!("SELECT user_id, amount, status FROM stripe_payments WHERE id = 'pi_{tag}'"));
    assert_eq!(
        (paid[0]["user_id"].as_str(), paid[0]["amount"].as_i64()),
        (Some(format!("usr_{tag}").as_str()), Some(900))
    );
    assert_eq!(paid[0]["status"], "legacy:paid");
}

#[test]
fn a_malformed_csv_is_refused_with_its_line_and_nothing_is_imported_or_staged() {
    let app = app();
    let _one_at_a_time = serial();
    let tag = unique("bad").replace('-', "");
    let users = format!("{USERS_HEADER}{tag}-u,a@x.test,70,,,\r\n");
    let payments = PAYMENTS_HEADER.to_string();
    let good = format!("{TX_HEADER}{tag}-t,{tag}-u,100,purchase,,,\r\n");
    for (file, csv) in [("users", &users), ("payments", &payments), ("credit_transactions", &good)] {
        assert_eq!(post_file(app, file, csv).status, 200);
    }
    let staged = || app.sql("SELECT name, rows, uploaded_at FROM legacy_credit_files ORDER BY name");
    let ledger = || app.count("SELECT COUNT(*) FROM credit_transactions");
    let (staged_before, ledger_before) = (staged(), ledger());
    std::thread::sleep(std::time::Duration::from_millis(1100));

    // Line 4 opens a quote that never closes (line 3 holds a quoted line break).
    let broken = format!(
        "{TX_HEADER}{tag}-t,{tag}-u,100,purchase,,\"{{\"\"a\"\":\r\n1}}\",\r\n{tag}-x,{tag}-u,1,grant,,\"{{oops,\r\n{tag}-y,{tag}-u,1,grant,,,\r\n"
    );
    let cases: Vec<(Resp, &str, i64)> = vec![
        (
            post(app, "?file=credit_transactions&commit=true&dryRun=false", "text/csv", broken.as_bytes()),
            "credit_transactions",
            4,
        ),
        (
            post_file(app, "credit_transactions", &format!("{TX_HEADER}{tag}-t,{tag}-u,1.5,grant,,,\r\n")),
            "credit_transactions",
            2,
        ),
        (
            post_file(
                app,
                "payments",
                &format!("{PAYMENTS_HEADER}{tag}-p,{tag}-u,,\"\",,,\r\n{tag}-q,{tag}-u,,5 euros,,,\r\n"),
            ),
            "payments",
            3,
        ),
        (post_file(app, "users", &format!("{USERS_HEADER}{tag}-a,a@x.test,-1,,,\r\n")), "users", 2),
        (post_file(app, "users", &format!("{USERS_HEADER} ,a@x.test,1,,,\r\n")), "users", 2),
        (post_file(app, "credit_transactions", &broken), "credit_transactions", 4),
        (
            post_file(app, "users", &format!("{USERS_HEADER}{tag}-a,a@x.test,1,,,\r\n{tag}-b,b@x.test,ten,,,\r\n")),
            "users",
            3,
        ),
        (post_file(app, "users", &format!("{USERS_HEADER}{tag}-a,a@x.test,1,,\r\n")), "users", 2),
        (post_file(app, "payments", "id,user_id,amount\r\n"), "payments", 1),
        (
            post_file(app, "users", &format!("{USERS_HEADER}{tag}-a,a@x.test,1,,,\r\n{tag}-a,b@x.test,1,,,\r\n")),
            "users",
            3,
        ),
    ];
    for (r, file, line) in cases {
        assert_eq!(r.status, 400, "{}", r.body);
        let body = r.json();
        assert_eq!(crate::error_code(&body), "INVALID_CSV");
        assert_eq!((body["file"].as_str(), body["line"].as_i64()), (Some(file), Some(line)), "{body}");
        assert!(body["message"].as_str().unwrap().contains(&format!("line {line}")), "{body}");
    }
    let r = post(app, "?file=users", "text/csv", b"id,email\r\n\xff\xfe,x\r\n");
    assert_eq!((r.status, r.json()["line"].as_i64()), (400, Some(2)), "{}", r.body);
    assert_eq!(staged(), staged_before, "a refused file leaves the staged ones as they were");
    assert_eq!(ledger(), ledger_before, "nothing imported");
    assert_eq!(app.count(&format!("SELECT COUNT(*) FROM legacy_credit_transactions WHERE id LIKE '{tag}-x%'")), 0);
}

#[test]
fn the_import_is_for_the_admin_and_says_what_is_wrong_with_a_request() {
    let app = app();
    let _one_at_a_time = serial();
    let r = send(
        &agent(),
        "POST",
        &app.url("/api/admin/migrations/credits?commit=true"),
        &[("Authorization", &format!("Bearer {}", token("someone")))],
        Some(b""),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    for (query, body) in [("", ""), ("?file=ledger", "id\r\n"), ("?commit=maybe", ""), ("?dryRun=yes&commit=true", "")]
    {
        let r = post(app, query, "text/csv", body.as_bytes());
        assert_eq!((r.status, crate::error_code(&r.json())), (400, "INVALID_REQUEST"), "{query}: {}", r.body);
    }
}

/// Inserts plangate users `usr_<tag>_<name>` (with their Stripe customer, if any), their
/// verified customer records (`(name, email)`) and a ledger row of `credits` each.
fn plangate_users(app: &App, tag: &str, users: &[(&str, Option<&str>, i64)], verified: &[(&str, &str)]) {
    let now = crate::support::now();
    let mut sql = String::new();
    for (name, cus, credits) in users {
        let cus = cus.map_or("NULL".to_string(), |c| format!("'{c}'"));
        sql += &format!(
            "INSERT INTO users (id, auth_id, stripe_customer_id, plan_updated_at, created_at, updated_at) \
             VALUES ('usr_{tag}_{name}', 'auth-{tag}-{name}', {cus}, {now}, {now}, {now});\n"
        );
        if *credits != 0 {
            sql += &format!(
                "INSERT INTO credit_transactions (id, user_id, delta, reason, source_key, created_at) \
                 VALUES ('ct_{tag}_{name}', 'usr_{tag}_{name}', {credits}, 'purchase', 'test:{tag}:{name}', {now});\n"
            );
        }
    }
    for (k, (name, email)) in verified.iter().enumerate() {
        let hash = sha256_hex(&email.to_lowercase());
        sql += &format!(
            "INSERT INTO customers (id, user_id, email_hash, source) VALUES ('cust_{tag}_{k}', 'usr_{tag}_{name}', '{hash}', 'legacy');\n"
        );
    }
    app.sql_exec(&sql);
}

/// The ledger rows the import wrote for legacy users `<tag>-…`: (source key, delta).
fn imported_rows(app: &App, tag: &str) -> Vec<(String, i64)> {
    app.sql(&format!(
        "SELECT source_key, delta FROM credit_transactions WHERE source_key >= 'legacy' AND source_key < 'legacz' \
         AND metadata->>'legacyUserId' LIKE '{tag}-%' ORDER BY created_at, source_key"
    ))
    .iter()
    .map(|r| (r["source_key"].as_str().unwrap().to_string(), r["delta"].as_i64().unwrap()))
    .collect()
}

#[test]
fn a_later_export_revises_the_balance_correction_so_each_user_has_their_legacy_balance_once() {
    let app = app();
    let _one_at_a_time = serial();
    let tag = unique("later").replace('-', "");
    // `a` had 30 plangate credits of its own; `b` none.
    plangate_users(
        app,
        &tag,
        &[("a", Some(&format!("cus_{tag}_a")), 30), ("b", Some(&format!("cus_{tag}_b")), 0)],
        &[],
    );
    let users = |a: i64, b: i64| {
        format!("{USERS_HEADER}{tag}-a,a@x.test,{a},cus_{tag}_a,,\r\n{tag}-b,b@x.test,{b},cus_{tag}_b,,\r\n")
    };
    let files = |users: &str, tx: &str| -> Vec<(&'static str, String)> {
        vec![
            ("users", users.to_string()),
            ("payments", PAYMENTS_HEADER.to_string()),
            ("credit_transactions", tx.to_string()),
        ]
    };
    let run = |files: &[(&str, String)], dry_run: bool| -> Value {
        let files: Vec<(&str, &str)> = files.iter().map(|(f, c)| (*f, c.as_str())).collect();
        let r = import(app, &files, dry_run);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };

    // The first export: the users file, an empty transactions file → one row each.
    let first = run(&files(&users(200, 100), TX_HEADER), false);
    assert_eq!((first["importedCredits"].as_i64(), first["difference"].as_i64()), (Some(300), Some(0)), "{first}");
    assert_eq!(
        imported_rows(app, &tag),
        vec![(format!("legacy-balance:{tag}-a"), 200), (format!("legacy-balance:{tag}-b"), 100)]
    );

    // A later export: `a` now 250 with transactions of 180; `b` 120 with 260, more than
    // its first row (the correction goes negative).
    let tx = format!(
        "{TX_HEADER}{tag}-t1,{tag}-a,100,purchase,,,\r\n{tag}-t2,{tag}-a,80,grant,,,\r\n\
         {tag}-t3,{tag}-b,300,purchase,,,\r\n{tag}-t4,{tag}-b,-40,spend,,,\r\n"
    );
    let later = files(&users(250, 120), &tx);
    let plan = run(&later, true);
    for (r, dry_run) in [(plan.clone(), true), (run(&later, false), false)] {
        assert_eq!(r["dryRun"], dry_run);
        assert_eq!((r["matchedCredits"].as_i64(), r["importedCredits"].as_i64()), (Some(370), Some(370)), "{r}");
        assert_eq!(r["difference"], 0, "{r}");
        assert_eq!(r["ledger"], serde_json::json!({"rows": 8, "balanceRows": 4}), "{r}");
        assert_eq!(r["written"], serde_json::json!({"ledgerRows": 6, "balanceRows": 2, "payments": 0}), "{r}");
    }
    let mut want = vec![
        (format!("legacy-balance:{tag}-a"), 200),
        (format!("legacy-balance:{tag}-b"), 100),
        (format!("legacy:{tag}-t1"), 100),
        (format!("legacy:{tag}-t2"), 80),
        (format!("legacy:{tag}-t3"), 300),
        (format!("legacy:{tag}-t4"), -40),
        (format!("legacy-balance:{tag}-a:2"), -130),
        (format!("legacy-balance:{tag}-b:2"), -240),
    ];
    let mut got = imported_rows(app, &tag);
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let ledger = ledger_of(app, &tag);
    assert_eq!(ledger, BTreeMap::from([(format!("usr_{tag}_a"), 280), (format!("usr_{tag}_b"), 120)]));
    let r = get(&app.url("/api/credits"), Some(&token(&format!("auth-{tag}-a"))));
    assert_eq!((r.status, r.json()["balance"].as_i64()), (200, Some(280)), "{}", r.body);

    // The same later export again writes nothing.
    let again = run(&later, false);
    assert_eq!(again["written"], serde_json::json!({"ledgerRows": 0, "balanceRows": 0, "payments": 0}), "{again}");
    assert_eq!((again["importedCredits"].as_i64(), again["difference"].as_i64()), (Some(370), Some(0)));
    assert_eq!(again["ledger"], serde_json::json!({"rows": 8, "balanceRows": 4}), "{again}");
    assert_eq!(ledger_of(app, &tag), ledger);
    assert_eq!(imported_rows(app, &tag).len(), 8);

    // An export that no longer lists a transaction the ledger holds (the balances as
    // they were): the user's rows already sum to their balance, nothing is written.
    let without_t2 = tx.replace(&format!("{tag}-t2,{tag}-a,80,grant,,,\r\n"), "");
    assert_ne!(without_t2, tx);
    let r = run(&files(&users(250, 120), &without_t2), false);
    assert_eq!(r["written"], serde_json::json!({"ledgerRows": 0, "balanceRows": 0, "payments": 0}), "{r}");
    assert_eq!((r["importedCredits"].as_i64(), r["difference"].as_i64()), (Some(370), Some(0)), "{r}");
    assert_eq!(ledger_of(app, &tag), ledger);
}

#[test]
fn a_plangate_user_is_matched_by_at_most_one_legacy_user_and_the_others_are_listed_unmatched_with_the_reason() {
    let app = app();
    let _one_at_a_time = serial();
    let tag = unique("twice").replace('-', "");
    let (e, m) = (format!("e@{tag}.test"), format!("m@{tag}.test"));
    // `s` has a Stripe customer and verified `e`; `m` verified `m`, the email of two
    // legacy users (in another case); `d`'s Stripe customer is on two legacy users.
    plangate_users(
        app,
        &tag,
        &[("s", Some(&format!("cus_{tag}_s")), 0), ("m", None, 0), ("d", Some(&format!("cus_{tag}_d")), 0)],
        &[("s", &e), ("m", &m)],
    );
    let users = format!(
        "{USERS_HEADER}{tag}-s,s@x.test,10,cus_{tag}_s,,\r\n{tag}-e,{e},20,,,\r\n\
         {tag}-m1,{m},30,,,\r\n{tag}-m2, {},40,,,\r\n{tag}-d1,d1@x.test,50,cus_{tag}_d,,\r\n{tag}-d2,d2@x.test,60,cus_{tag}_d,,\r\n\
         {tag}-x1,x1@x.test,1,cus_{tag}_x,,\r\n{tag}-x2,x2@x.test,2,cus_{tag}_x,,\r\n",
        m.to_uppercase()
    );
    let tx = format!("{TX_HEADER}{tag}-t,{tag}-d1,50,purchase,,,\r\n");
    let files = [("users", users.as_str()), ("payments", PAYMENTS_HEADER), ("credit_transactions", tx.as_str())];
    for dry_run in [true, false] {
        let r = import(app, &files, dry_run);
        assert_eq!(r.status, 200, "{}", r.body);
        let r = r.json();
        assert_eq!(
            r["matched"],
            serde_json::json!([{"legacyId": format!("{tag}-s"), "userId": format!("usr_{tag}_s"), "by": "stripe_customer"}])
        );
        let unmatched: BTreeMap<&str, (&Value, &Value, i64)> = r["unmatched"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                (u["legacyId"].as_str().unwrap(), (&u["userId"], &u["reason"], u["creditsBalance"].as_i64().unwrap()))
            })
            .collect();
        let twice = |user: &str, credits: i64| {
            (Value::from(format!("usr_{tag}_{user}")), Value::from("user_matched_twice"), credits)
        };
        let want = BTreeMap::from([
            (format!("{tag}-e"), twice("s", 20)),
            (format!("{tag}-m1"), twice("m", 30)),
            (format!("{tag}-m2"), twice("m", 40)),
            (format!("{tag}-d1"), twice("d", 50)),
            (format!("{tag}-d2"), twice("d", 60)),
            (format!("{tag}-x1"), (Value::Null, Value::Null, 1)),
            (format!("{tag}-x2"), (Value::Null, Value::Null, 2)),
        ]);
        let got: BTreeMap<String, (Value, Value, i64)> =
            unmatched.into_iter().map(|(k, (u, why, c))| (k.to_string(), (u.clone(), why.clone(), c))).collect();
        assert_eq!(got, want, "every legacy user is listed, none merged into another's account");
        assert_eq!(r["users"]["unmatched"], 7);
        assert_eq!((r["matchedCredits"].as_i64(), r["unmatchedCredits"].as_i64()), (Some(10), Some(203)));
        assert_eq!((r["importedCredits"].as_i64(), r["difference"].as_i64()), (Some(10), Some(0)));
        assert_eq!(r["transactions"]["ofUnmatchedUsers"], 1);
    }
    let ledger = ledger_of(app, &tag);
    assert_eq!(ledger, BTreeMap::from([(format!("usr_{tag}_s"), 10)]), "only `s` got legacy credits");
}

#[test]
fn a_file_too_large_for_one_call_is_staged_in_parts_and_an_id_repeated_across_parts_is_refused_with_its_line() {
    let app = app();
    let _one_at_a_time = serial();
    let tag = unique("parts").replace('-', "");
    app.sql_exec("DELETE FROM legacy_credit_files; DELETE FROM legacy_users; DELETE FROM legacy_payments; DELETE FROM legacy_credit_transactions;");
    let part = |range: std::ops::Range<usize>| {
        let mut csv = TX_HEADER.to_string();
        for i in range {
            csv.push_str(&format!("{tag}-t{i},{tag}-u,1,grant,,,\r\n"));
        }
        csv
    };
    let r = post_file(app, "credit_transactions", &part(0..3));
    assert_eq!(r.json()["staged"]["credit_transactions"], 3, "{}", r.body);
    let r = post(app, "?file=credit_transactions&append=true", "text/csv", part(3..5).as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["staged"]["credit_transactions"], 5, "the part is added, not a replacement");

    // A part repeating a staged id: refused with the line in that part, nothing of it staged.
    let r = post(app, "?file=credit_transactions&append=true", "text/csv", part(5..7).replace("t6,", "t1,").as_bytes());
    assert_eq!((r.status, crate::error_code(&r.json())), (400, "INVALID_CSV"), "{}", r.body);
    assert_eq!((r.json()["file"].as_str(), r.json()["line"].as_i64()), (Some("credit_transactions"), Some(3)));
    assert!(r.json()["message"].as_str().unwrap().contains("staged already"), "{}", r.body);
    assert_eq!(app.count("SELECT COUNT(*) FROM legacy_credit_transactions"), 5);
    assert_eq!(app.count("SELECT rows FROM legacy_credit_files WHERE name = 'credit_transactions'"), 5);

    // Without append, an upload still replaces the staged copy.
    let r = post_file(app, "credit_transactions", &part(10..11));
    assert_eq!(r.json()["staged"]["credit_transactions"], 1, "{}", r.body);
    assert_eq!(post(app, "?file=credit_transactions&append=maybe", "text/csv", part(11..12).as_bytes()).status, 400);
    app.sql_exec("DELETE FROM legacy_credit_files; DELETE FROM legacy_credit_transactions;");
}
