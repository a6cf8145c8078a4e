//! Test and bench support: starts a real `wrangler dev` (fresh `--persist-to`, migrations
//! applied) on a free loopback port, signs tokens, serves a JWKS, and reads the local
//! D1 database directly. Shared by `tests/api` and `benches/load.rs`.
#![allow(dead_code, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::{Signature, SigningKey};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use sha2::Sha256;

pub const JWT_SECRET: &str = "e2e-test-secret-0123456789abcdef0123456789";
pub const ALLOWED_ORIGIN: &str = "https://app.example.test";
/// The `iss` / `aud` an app with `AUTH_JWKS_URL` requires (see `AppOptions::with_jwks`); the
/// tokens made here carry them, so they pass on every app.
pub const ISSUER: &str = "https://securetoken.example.test/plangate-e2e";
pub const AUDIENCE: &str = "plangate-e2e";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn wrangler_bin() -> PathBuf {
    let bin = root().join("node_modules/.bin/wrangler");
    assert!(bin.exists(), "wrangler is not installed: run `make test` (it runs `npm ci`)");
    bin
}

/// Unix seconds → `2023-11-14T22:13:20Z`, as the API formats times.
pub fn iso(t: i64) -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys,datetime;print(datetime.datetime.fromtimestamp(int(sys.argv[1]),datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))"])
        .arg(t.to_string())
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ------------------------------------------------------------------------------------
// Tokens

pub fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let mut b = [0u8; 3];
        b[..chunk.len()].copy_from_slice(chunk);
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..chunk.len() + 1 {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

pub fn hs256(secret: &str, claims: &Value) -> String {
    let input = format!("{}.{}", b64url(br#"{"alg":"HS256","typ":"JWT"}"#), b64url(claims.to_string().as_bytes()));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64url(&mac.finalize().into_bytes()))
}

/// Claims valid now for `sub`, with the test issuer and audience.
pub fn claims(sub: &str) -> Value {
    json!({"sub": sub, "email": format!("{sub}@example.test"), "iss": ISSUER, "aud": AUDIENCE,
           "iat": now(), "exp": now() + 3600})
}

/// A valid development token for `sub`.
pub fn token(sub: &str) -> String {
    hs256(JWT_SECRET, &claims(sub))
}

/// A service token for `name`: HS256 with `SERVICE_JWT_SECRET`, scope `plangate:service`.
pub fn service_token(name: &str) -> String {
    hs256(
        stripe_fake::SERVICE_JWT_SECRET,
        &json!({"sub": name, "iat": now(), "exp": now() + 3600, "scope": "plangate:service"}),
    )
}

pub fn rsa_key(name: &str) -> RsaPrivateKey {
    let pem = std::fs::read_to_string(root().join(format!("tests/fixtures/{name}.pem"))).unwrap();
    RsaPrivateKey::from_pkcs1_pem(&pem).unwrap()
}

pub fn rs256(key: &RsaPrivateKey, kid: &str, claims: &Value) -> String {
    let header = b64url(json!({"alg":"RS256","typ":"JWT","kid":kid}).to_string().as_bytes());
    let input = format!("{header}.{}", b64url(claims.to_string().as_bytes()));
    let sig: Signature = SigningKey::<Sha256>::new(key.clone()).sign(input.as_bytes());
    format!("{input}.{}", b64url(&sig.to_bytes()))
}

pub fn jwk(key: &RsaPrivateKey, kid: &str) -> Value {
    let public = key.to_public_key();
    json!({"kty":"RSA","kid":kid,"alg":"RS256","use":"sig",
           "n": b64url(&public.n().to_bytes_be()), "e": b64url(&public.e().to_bytes_be())})
}

// ------------------------------------------------------------------------------------
// A JWKS endpoint on loopback, like Google's securetoken keys.

pub struct JwksServer {
    pub url: String,
    pub hits: Arc<AtomicUsize>,
    pub keys: Arc<Mutex<Value>>,
}

impl JwksServer {
    pub fn start(keys: Value) -> JwksServer {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let keys = Arc::new(Mutex::new(keys));
        let (h, k) = (hits.clone(), keys.clone());
        std::thread::spawn(move || {
            for req in server.incoming_requests() {
                h.fetch_add(1, Ordering::SeqCst);
                let body = k.lock().unwrap().to_string();
                let resp = tiny_http::Response::from_string(body)
                    .with_header("Content-Type: application/json".parse::<tiny_http::Header>().unwrap())
                    .with_header("Cache-Control: public, max-age=300".parse::<tiny_http::Header>().unwrap());
                let _ = req.respond(resp);
            }
        });
        JwksServer { url: format!("http://127.0.0.1:{port}/jwks"), hits, keys }
    }
}

// ------------------------------------------------------------------------------------
// The app under test.

pub struct AppOptions {
    pub vars: Vec<(String, String)>,
    pub migrate: bool,
    /// Reuse this state directory (e.g. to restart after a crash) and keep it.
    pub persist: Option<PathBuf>,
    /// Run with this wrangler configuration instead of `wrangler.toml` (e.g. one
    /// without the KV binding, to make every KV write fail).
    pub config: Option<PathBuf>,
    /// Serve `public/` as wrangler.toml's `[assets]` says. Off by default: wrangler
    /// 4.86's local runtime cannot trigger the cron (`/cdn-cgi/handler/scheduled`
    /// answers 500) when a Worker has static assets, so apps run without them (see
    /// [`test_config`]) unless a test needs the static files.
    pub static_files: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions { vars: Vec::new(), migrate: true, persist: None, config: None, static_files: false }
    }
}

/// `wrangler.toml` without `[build]` and the deployed environments (which test apps do
/// not use: `make test` builds the Worker first, and a build started by one app while
/// others run would reload them all mid-test), and without `[assets]` unless `assets`,
/// its paths made absolute, written to `dir`: what an app runs with.
pub fn test_config(dir: &Path, assets: bool) -> PathBuf {
    let text = std::fs::read_to_string(root().join("wrangler.toml")).unwrap();
    let mut out = String::new();
    let mut skip = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            let name = t.trim_start_matches('[').trim_end_matches(']').trim_end_matches(']');
            skip = (name == "assets" && !assets) || name == "build" || name.starts_with("env.");
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    let absolute = |rel: &str| format!("{:?}", root().join(rel).display().to_string());
    let out = out
        .replace("main = \"build/index.js\"", &format!("main = {}", absolute("build/index.js")))
        .replace("migrations_dir = \"migrations\"", &format!("migrations_dir = {}", absolute("migrations")))
        .replace("directory = \"public\"", &format!("directory = {}", absolute("public")));
    assert!(
        out.contains("[assets]") == assets
            && !out.contains("[build]")
            && out.contains("[[d1_databases]]")
            && !out.contains("main = \"build")
            && !out.contains("directory = \"public\""),
        "{out}"
    );
    let path = dir.join("wrangler.toml");
    std::fs::write(&path, out).unwrap();
    path
}

impl AppOptions {
    pub fn var(mut self, k: &str, v: &str) -> Self {
        self.vars.push((k.to_string(), v.to_string()));
        self
    }

    /// RS256 tokens verified with the keys at `url`, for the test issuer and audience.
    pub fn with_jwks(self, url: &str) -> Self {
        self.var("AUTH_JWKS_URL", url).var("AUTH_ISSUER", ISSUER).var("AUTH_AUDIENCE", AUDIENCE)
    }
}

pub struct App {
    pub base: String,
    keep: bool,
    pub persist: PathBuf,
    child: Mutex<Option<Child>>,
    /// Closing this tells the wrapper shell to stop wrangler with SIGINT; it also
    /// closes by itself when the test process exits, however it exits.
    stdin: Mutex<Option<ChildStdin>>,
    log: PathBuf,
}

pub fn wrangler_command() -> Command {
    let mut c = Command::new(wrangler_bin());
    c.current_dir(root())
        .env("CI", "1")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("NO_COLOR", "1")
        .env("PATH", tool_path());
    c
}

/// PATH with the project's npm binaries and cargo-installed tools first, as `make` sets it.
fn tool_path() -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    format!(
        "{}:{home}/.cargo/bin:{}",
        root().join("node_modules/.bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn apply_migrations(persist: &Path, config: Option<&Path>) {
    let mut cmd = wrangler_command();
    cmd.args(["d1", "migrations", "apply", "DB", "--local", "--persist-to"]).arg(persist);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd.output().expect("run wrangler d1 migrations apply");
    assert!(
        out.status.success(),
        "migrations failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Applies the migrations to a new state directory and runs `sql` on its D1 before any
/// app serves it (then spawn with `persist: Some(dir), migrate: false`): for state that
/// would take long to make through the API, e.g. more due work than one cron run does.
pub fn seed_state(persist: &Path, sql: &str) {
    std::fs::create_dir_all(persist).unwrap();
    apply_migrations(persist, None);
    let file = persist.join("seed.sql");
    std::fs::write(&file, sql).unwrap();
    let out = wrangler_command()
        .args(["d1", "execute", "DB", "--local", "--yes", "--persist-to"])
        .arg(persist)
        .arg("--file")
        .arg(&file)
        .output()
        .expect("run wrangler d1 execute");
    assert!(
        out.status.success(),
        "seeding failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl App {
    pub fn spawn(opts: AppOptions) -> App {
        assert!(
            root().join("build/index.js").exists(),
            "build/index.js is missing: run `make test` (it builds the worker first)"
        );
        let keep = opts.persist.is_some();
        let persist = opts.persist.clone().unwrap_or_else(|| std::env::temp_dir().join(unique("plangate-e2e")));
        std::fs::create_dir_all(&persist).unwrap();
        let config = match &opts.config {
            Some(c) => Some(c.clone()),
            None => Some(test_config(&persist, opts.static_files)),
        };
        if opts.migrate {
            apply_migrations(&persist, config.as_deref());
        }
        // Secrets and vars come only from here, never from a developer's .dev.vars.
        // wrangler.toml's development [vars] apply underneath; EXPOSE_D1_STATS is blanked
        // (empty = unset) so an app is like qa/production unless its options turn it on.
        let mut vars: Vec<(String, String)> = vec![
            ("AUTH_JWT_SECRET".into(), JWT_SECRET.into()),
            ("ALLOWED_ORIGINS".into(), ALLOWED_ORIGIN.into()),
            ("ENVIRONMENT".into(), "test".into()),
            ("EXPOSE_D1_STATS".into(), String::new()),
        ];
        for (k, v) in opts.vars {
            vars.retain(|(x, _)| *x != k);
            vars.push((k, v));
        }
        let env_file = persist.join("test.env");
        let mut f = std::fs::File::create(&env_file).unwrap();
        for (k, v) in &vars {
            writeln!(f, "{k}={v}").unwrap();
        }
        let port = free_port();
        let log = persist.join(format!("wrangler-{port}.log"));
        let mut args: Vec<String> = vec![
            "dev".into(),
            "--local".into(),
            "--ip".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--inspector-port".into(),
            free_port().to_string(),
            "--persist-to".into(),
            persist.display().to_string(),
            "--env-file".into(),
            env_file.display().to_string(),
            "--show-interactive-dev-session=false".into(),
        ];
        if let Some(config) = &config {
            args.push("--config".into());
            args.push(config.display().to_string());
        }
        for (k, v) in &vars {
            args.push("--var".into());
            args.push(format!("{k}:{v}"));
        }
        let quoted: Vec<String> = args.iter().map(|a| format!("'{}'", a.replace('\'', r"'\''"))).collect();
        let script = format!(
            "'{}' {} >'{}' 2>&1 & pid=$!; cat >/dev/null; kill -INT $pid; wait $pid; {}",
            wrangler_bin().display(),
            quoted.join(" "),
            log.display(),
            // Shared apps live until the test process exits; clean up after them too.
            if keep || std::env::var_os("PLANGATE_KEEP_STATE").is_some() {
                String::new()
            } else {
                format!("rm -rf '{}'", persist.display())
            }
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(root())
            .env("CI", "1")
            .env("WRANGLER_SEND_METRICS", "false")
            .env("NO_COLOR", "1")
            .env("PATH", tool_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wrangler dev");
        let stdin = child.stdin.take();
        let app = App {
            base: format!("http://127.0.0.1:{port}"),
            keep,
            persist,
            child: Mutex::new(Some(child)),
            stdin: Mutex::new(stdin),
            log,
        };
        if let Ok(mut logs) = APP_LOGS.lock() {
            logs.push((app.base.clone(), app.log.clone()));
        }
        app.wait_ready(Duration::from_secs(180));
        app
    }

    fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
        while start.elapsed() < limit {
            if let Ok(r) = agent.get(&format!("{}/health", self.base)).call() {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(c) = self.child.lock().unwrap().as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("wrangler dev exited ({status}):\n{}", self.log_tail());
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("wrangler dev not ready after {limit:?}:\n{}", self.log_tail());
    }

    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let start = s.len().saturating_sub(4000);
        s[s.char_indices().map(|(i, _)| i).find(|&i| i >= start).unwrap_or(0)..].to_string()
    }

    /// The full worker log so far (structured JSON lines among wrangler's own output).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A value of the local `APP_KV`, as another reader would see it. The copies are
    /// written after the response, so it waits up to `patience` for `expect` to hold.
    pub fn kv_get_when(
        &self,
        key: &str,
        patience: Duration,
        expect: impl Fn(&Option<String>) -> bool,
    ) -> Option<String> {
        let start = Instant::now();
        loop {
            let out = wrangler_command()
                .args(["kv", "key", "get", "--binding", "APP_KV", "--local", "--persist-to"])
                .arg(&self.persist)
                .arg(key)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let value = (out.status.success() && !text.is_empty() && !text.contains("Value not found")).then_some(text);
            if expect(&value) || start.elapsed() > patience {
                return value;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Writes a value of the local `APP_KV` behind the Worker's back (as another
    /// writer would).
    pub fn kv_put(&self, key: &str, value: &str) {
        let out = wrangler_command()
            .args(["kv", "key", "put", "--binding", "APP_KV", "--local", "--persist-to"])
            .arg(&self.persist)
            .args([key, value])
            .output()
            .unwrap();
        assert!(out.status.success(), "kv put {key}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Writes many values of the local KV namespace `binding` behind the Worker's back
    /// in one `wrangler kv bulk put` per 5,000 (far faster than a put per key). Two
    /// writers of one local store at once fail (its SQLite is locked): the writes of
    /// this process take turns, and a put refused because the Worker itself was
    /// writing is retried.
    pub fn kv_put_bulk(&self, binding: &str, pairs: &[(String, String)]) {
        static ONE_WRITER: Mutex<()> = Mutex::new(());
        let _turn = ONE_WRITER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (n, chunk) in pairs.chunks(5000).enumerate() {
            let body: Vec<Value> = chunk.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
            let file = self.persist.join(format!("kv-bulk-{}-{n}.json", unique("put")));
            std::fs::write(&file, Value::Array(body).to_string()).unwrap();
            let mut attempt = 0;
            loop {
                let out = wrangler_command()
                    .args(["kv", "bulk", "put", "--binding", binding, "--local", "--persist-to"])
                    .arg(&self.persist)
                    .arg(&file)
                    .output()
                    .unwrap();
                attempt += 1;
                if out.status.success() {
                    break;
                }
                assert!(attempt < 5, "kv bulk put: {}", String::from_utf8_lossy(&out.stderr));
                std::thread::sleep(Duration::from_millis(300 * attempt));
            }
            let _ = std::fs::remove_file(&file);
        }
    }

    /// Writes a value of the local KV namespace bound as `binding` (e.g. `LEGACY_AUTH_KV`)
    /// behind the Worker's back, as the legacy writers did.
    pub fn kv_put_in(&self, binding: &str, key: &str, value: &str) {
        self.kv_put_bulk(binding, &[(key.to_string(), value.to_string())]);
    }

    /// Deletes a key of the local namespace `binding`.
    pub fn kv_delete_in(&self, binding: &str, key: &str) {
        // Retried like `kv_put_bulk`: the local store is briefly locked by other writers.
        for attempt in 1.. {
            let out = wrangler_command()
                .args(["kv", "key", "delete", "--binding", binding, "--local", "--persist-to"])
                .arg(&self.persist)
                .arg(key)
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(attempt < 5, "kv delete {key} in {binding}: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(300 * attempt));
        }
    }

    /// A value of the local namespace `binding`, read now.
    pub fn kv_get_in(&self, binding: &str, key: &str) -> Option<String> {
        let out = wrangler_command()
            .args(["kv", "key", "get", "--binding", binding, "--local", "--persist-to"])
            .arg(&self.persist)
            .arg(key)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.is_empty() && !text.contains("Value not found")).then_some(text)
    }

    /// Runs SQL statements (a script) against the local D1 through `wrangler d1 execute`,
    /// as another writer would: for tests that need rows no endpoint writes.
    /// The running app may hold the database for a moment (`SQLITE_BUSY`): retried.
    pub fn sql_exec(&self, script: &str) {
        let file = self.persist.join(format!("{}.sql", unique("exec")));
        std::fs::write(&file, script).unwrap();
        let mut attempts = 0;
        let out = loop {
            let out = wrangler_command()
                .args(["d1", "execute", "DB", "--local", "--yes", "--persist-to"])
                .arg(&self.persist)
                .arg("--file")
                .arg(&file)
                .output()
                .unwrap();
            attempts += 1;
            let busy = String::from_utf8_lossy(&out.stderr).contains("SQLITE_BUSY")
                || String::from_utf8_lossy(&out.stdout).contains("SQLITE_BUSY");
            if out.status.success() || !busy || attempts == 20 {
                break out;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let _ = std::fs::remove_file(&file);
        assert!(
            out.status.success(),
            "d1 execute failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The keys of a KV namespace (`binding`) that start with `prefix`.
    /// (A local read racing the running app's writes may fail: retried.)
    pub fn kv_keys(&self, binding: &str, prefix: &str) -> Vec<String> {
        let mut attempts = 0;
        let out = loop {
            let out = wrangler_command()
                .args(["kv", "key", "list", "--binding", binding, "--local", "--persist-to"])
                .arg(&self.persist)
                .args(["--prefix", prefix])
                .output()
                .unwrap();
            attempts += 1;
            if out.status.success() || attempts == 10 {
                break out;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert!(out.status.success(), "kv key list: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let json = &text[text.find('[').unwrap_or(0)..];
        serde_json::from_str::<Vec<Value>>(json)
            .unwrap_or_else(|e| panic!("kv key list output ({e}): {text}"))
            .iter()
            .filter_map(|k| k["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Runs a read-only SQL query against the local D1 (SQLite) file.
    pub fn sql(&self, query: &str) -> Vec<Value> {
        let dir = self.persist.join("v3/d1/miniflare-D1DatabaseObject");
        let db = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("no local D1 at {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "sqlite") && !p.to_string_lossy().contains("metadata"))
            .expect("a .sqlite file");
        let script = r#"
import json, sqlite3, sys
con = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=10)
con.row_factory = sqlite3.Row
print(json.dumps([dict(r) for r in con.execute(sys.argv[2]).fetchall()]))
"#;
        let out = Command::new("python3").args(["-c", script]).arg(&db).arg(query).output().expect("python3");
        assert!(out.status.success(), "sql failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    }

    pub fn count(&self, query: &str) -> i64 {
        self.sql(query)[0].as_object().unwrap().values().next().unwrap().as_i64().unwrap()
    }

    pub fn stop(&self) {
        drop(self.stdin.lock().unwrap().take());
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.persist);
        }
    }
}

// ------------------------------------------------------------------------------------
// HTTP

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build()
}

fn to_resp(r: ureq::Response) -> Resp {
    let status = r.status();
    let headers = r
        .headers_names()
        .into_iter()
        .flat_map(|n| r.all(&n).into_iter().map(|v| (n.clone(), v.to_string())).collect::<Vec<_>>())
        .collect();
    let mut body = String::new();
    let _ = BufReader::new(r.into_reader()).read_to_string(&mut body);
    Resp { status, headers, body }
}

/// Sends a request and returns the response whatever its status.
pub fn send(agent: &ureq::Agent, method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    match result {
        Ok(r) => to_resp(r),
        Err(ureq::Error::Status(_, r)) => to_resp(r),
        Err(e) => panic!("{method} {url}: {e}\n{}", app_log_for(url)),
    }
}

/// The log file of every app spawned by this process, by base URL: a request that gets
/// no HTTP answer at all (wrangler itself stuck or gone) shows what wrangler printed.
static APP_LOGS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

fn app_log_for(url: &str) -> String {
    let logs = APP_LOGS.lock().map(|l| l.clone()).unwrap_or_default();
    match logs.iter().find(|(base, _)| url.starts_with(base.as_str())) {
        Some((base, log)) => {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let start = text.len().saturating_sub(6000);
            let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            format!("--- tail of the wrangler log of {base} ({}) ---\n{}", log.display(), &text[start..])
        }
        None => String::new(),
    }
}

/// What [`post_chunked`] saw.
pub struct ChunkedUpload {
    pub resp: Resp,
    /// The answer arrived while the client was still holding back the rest of the body.
    pub answered_while_held: bool,
    pub elapsed: Duration,
}

/// POSTs `total` bytes of `x` with `Transfer-Encoding: chunked` (no Content-Length), in
/// 64 KiB chunks, over a raw connection. Only the first `send_first` bytes are sent
/// before the client waits, up to `hold`, for the answer; the rest follows once it
/// arrived or `hold` passed (a server that reads the whole body before answering can
/// only answer after `hold`). Write errors after the answer are ignored: the server may
/// close the connection without reading the rest.
pub fn post_chunked(
    url: &str,
    headers: &[(&str, &str)],
    total: usize,
    send_first: usize,
    hold: Duration,
) -> ChunkedUpload {
    use std::net::TcpStream;
    use std::sync::atomic::AtomicBool;
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head =
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut writer = stream.try_clone().unwrap();
    let (answered_tx, answered_rx) = std::sync::mpsc::channel::<()>();
    let held_too_long = Arc::new(AtomicBool::new(false));
    let held = held_too_long.clone();
    let start = Instant::now();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(head.as_bytes())?;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        let mut send = |upto: usize, w: &mut TcpStream| -> std::io::Result<()> {
            while sent < upto {
                let n = chunk.len().min(upto - sent);
                w.write_all(format!("{n:x}\r\n").as_bytes())?;
                w.write_all(&chunk[..n])?;
                w.write_all(b"\r\n")?;
                sent += n;
            }
            w.flush()
        };
        send(send_first.min(total), &mut writer)?;
        if send_first < total && answered_rx.recv_timeout(hold).is_err() {
            held.store(true, Ordering::SeqCst);
        }
        send(total, &mut writer)?;
        writer.write_all(b"0\r\n\r\n")
    });
    let resp = read_http_response(&mut stream);
    let elapsed = start.elapsed();
    let answered_while_held = send_first < total && !held_too_long.load(Ordering::SeqCst);
    let _ = answered_tx.send(());
    let _ = sender.join();
    ChunkedUpload { resp, answered_while_held, elapsed }
}

/// One HTTP/1.1 response (Content-Length, chunked or until close) from a raw stream.
fn read_http_response(stream: &mut impl Read) -> Resp {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            other => {
                panic!("connection ended before the response head ({other:?}): {:?}", String::from_utf8_lossy(&buf))
            }
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let find = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(len) = find("Content-Length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        stream.read_exact(&mut body).unwrap();
    } else if find("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut reader = BufReader::new(stream);
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or_default(), 16).unwrap();
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let _ = stream.read_to_end(&mut body);
    }
    Resp { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

pub fn get(url: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    send(&agent(), "GET", url, &headers, None)
}

/// Lines of the worker log that are plangate's structured JSON lines.
pub fn json_log_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| Some(&l[l.find('{')?..=l.rfind('}')?]))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("requestId").is_some())
        .collect()
}

pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::File::open(path).map(|f| BufReader::new(f).lines().map_while(Result::ok).collect()).unwrap_or_default()
}
pub mod stripe_fake;
