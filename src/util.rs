//! Small helpers for the Worker runtime: async timeouts and bodies, URLs, JSON objects.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// Runs `fut`, giving up after `ms` milliseconds (`None`).
pub async fn with_timeout<F: Future>(fut: F, ms: u64) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut delay = pin!(worker::Delay::from(Duration::from_millis(ms)));
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if delay.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Collects a body from a stream of chunks, stopping as soon as it holds more than
/// `limit` bytes (`Err(Some(limit))`; the caller drops the stream, which cancels it, so
/// the rest is never read). `Err(None)`: the stream failed.
pub async fn read_limited<S, E>(mut chunks: S, limit: u64) -> Result<Vec<u8>, Option<u64>>
where
    S: futures_util::Stream<Item = Result<Vec<u8>, E>> + Unpin,
{
    use futures_util::StreamExt;
    let mut body = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|_| None)?;
        if (body.len() as u64).saturating_add(chunk.len() as u64) > limit {
            return Err(Some(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON object from `(key, value)` pairs: what [`obj!`](crate::obj) builds.
pub fn object(fields: Vec<(&str, serde_json::Value)>) -> serde_json::Value {
    // Inserted one by one: `collect` into the map would sort first and link a sort.
    let mut map = serde_json::Map::new();
    for (k, v) in fields {
        map.insert(k.to_string(), v);
    }
    serde_json::Value::Object(map)
}

/// A flat JSON object, `obj!{"key": value, …}`, each value taken by `Value::from`
/// (strings, numbers, booleans, `Option`s of them, `Vec`s, `Value`s). `json!` does
/// the same through a serializer call and an `unwrap` per field: about 50 bytes of
/// Wasm more per field, with a hundred fields in plangate's replies and log lines.
#[macro_export]
macro_rules! obj {
    ($($key:literal : $value:expr),* $(,)?) => {
        $crate::util::object(vec![$(($key, ::serde_json::Value::from($value))),*])
    };
}

/// The fields of a JSON object (a D1 row, a stored value), taken out by name with
/// their type checked. A required field absent (or null) or any field of the wrong type
/// is remembered, the first one being what [`Columns::done`] refuses the object for;
/// the readers return a default meanwhile, so a caller builds its struct in one
/// expression and checks once (no error path per field in the Wasm).
pub struct Columns {
    fields: serde_json::Map<String, serde_json::Value>,
    error: Option<String>,
}

impl Columns {
    pub fn of(v: serde_json::Value, what: &str) -> Result<Columns, String> {
        match v {
            serde_json::Value::Object(fields) => Ok(Columns { fields, error: None }),
            _ => Err(format!("{what} is not an object")),
        }
    }

    fn fail(&mut self, column: &str, why: &str) {
        if self.error.is_none() {
            self.error = Some(format!("{why} `{column}`"));
        }
    }

    /// The field, taken out (left null); `None` when absent or null.
    fn take(&mut self, column: &str) -> Option<serde_json::Value> {
        self.fields.get_mut(column).map(std::mem::take).filter(|v| !v.is_null())
    }

    pub fn opt_text(&mut self, column: &str) -> Option<String> {
        match self.take(column) {
            None => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(_) => {
                self.fail(column, "not a string:");
                None
            }
        }
    }

    pub fn opt_int(&mut self, column: &str) -> Option<i64> {
        let v = self.take(column)?;
        let n = v.as_i64();
        if n.is_none() {
            self.fail(column, "not a whole number:");
        }
        n
    }

    pub fn text(&mut self, column: &str) -> String {
        let s = self.opt_text(column);
        if s.is_none() {
            self.fail(column, "missing field");
        }
        s.unwrap_or_default()
    }

    pub fn int(&mut self, column: &str) -> i64 {
        let n = self.opt_int(column);
        if n.is_none() {
            self.fail(column, "missing field");
        }
        n.unwrap_or_default()
    }

    /// `value`, unless a field was missing or of the wrong type.
    pub fn done<T>(self, value: T) -> Result<T, String> {
        match self.error {
            None => Ok(value),
            Some(e) => Err(e),
        }
    }
}

/// `v` as compact JSON text. Not `v.to_string()`: `Value`'s `Display` also links
/// serde_json's pretty printer (for `{:#}`) and an `io::Error` adapter, which writing
/// to a `Vec` does without.
pub fn json_text(v: &serde_json::Value) -> String {
    // Writing a `Value` cannot fail: its map keys are strings.
    serde_json::to_string(v).unwrap_or_default()
}

/// `n` random bytes as lowercase hex, from the platform CSPRNG.
pub fn random_hex(n: usize) -> Result<String, crate::error::ApiError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| crate::error::ApiError::server(format!("getrandom: {e}")))?;
    Ok(hex::encode(buf))
}

/// `https://host/a/b?x=1#f` → (`/a/b`, `x=1`). Parsed by hand: the `url` crate (and
/// its IDNA tables) would cost more of the Wasm bundle than everything here.
pub fn split_url(url: &str) -> (String, String) {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path_and_query = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    let without_fragment = path_and_query.split('#').next().unwrap_or_default();
    match without_fragment.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (without_fragment.to_string(), String::new()),
    }
}

/// Scheme, host and port of an absolute URL (`scheme://host[:port][/…]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// Lowercase.
    pub scheme: String,
    /// Lowercase; an IPv6 literal keeps its brackets (`[::1]`).
    pub host: String,
    pub port: Option<u16>,
    /// Whatever follows the authority (path, query, fragment), raw; empty for an origin.
    pub rest: String,
}

impl Authority {
    /// `localhost`, `127.0.0.1` or `[::1]`, spelled exactly so (no trailing dot, no
    /// other spelling of the address): only what every URL parser reads the same way.
    pub fn is_loopback(&self) -> bool {
        matches!(self.host.as_str(), "localhost" | "127.0.0.1" | "[::1]")
    }
}

/// Parses the scheme, host and port of `url` exactly, or `None` when the URL is not
/// plainly `scheme://host[:port]` followed by nothing or by `/`, `?` or `#`. Refused
/// rather than guessed at: userinfo (`user@host`), and anywhere in the URL backslashes,
/// whitespace, control characters and non-ASCII (a WHATWG parser, as `fetch` uses,
/// strips, maps or reinterprets them); percent escapes in the host, an empty host, an
/// empty or out-of-range port.
/// Parsed by hand for the same reason as [`split_url`].
pub fn parse_authority(url: &str) -> Option<Authority> {
    if url.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'\\' || !b.is_ascii()) {
        return None;
    }
    let (scheme, after) = url.split_once("://")?;
    let mut sc = scheme.bytes();
    if !sc.next().is_some_and(|b| b.is_ascii_alphabetic())
        || !sc.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return None;
    }
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    if authority.contains('@') {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find(']')?;
        let (literal, tail) = authority.split_at(close + 1);
        let inner = &literal[1..literal.len() - 1];
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return None;
        }
        match tail {
            "" => (literal, None),
            t => (literal, Some(t.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let plain_name = |h: &str| h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if host.is_empty() || (!host.starts_with('[') && !plain_name(host)) {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse::<u16>().ok()?),
        Some(_) => return None,
    };
    Some(Authority {
        scheme: scheme.to_ascii_lowercase(),
        host: host.to_ascii_lowercase(),
        port,
        rest: rest.to_string(),
    })
}

/// An `https://` URL on any host, or `http://` on a loopback host only (local fakes
/// and key servers in development and tests).
pub fn is_https_or_loopback_http(url: &str) -> bool {
    match parse_authority(url) {
        Some(a) if a.scheme == "https" => true,
        Some(a) if a.scheme == "http" => a.is_loopback(),
        _ => false,
    }
}

/// Decodes `%XX` escapes and `+` (form encoding); invalid escapes are kept as text.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first value of `name` in a query string, decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obj_builds_the_same_object_as_json() {
        let none: Option<&str> = None;
        let v = crate::obj! {"s": "x", "n": 3_i64, "b": true, "none": none, "some": Some(2_u32), "list": vec!["a"],
        "nested": crate::obj! {"k": String::from("v")}};
        assert_eq!(
            v,
            serde_json::json!({"s": "x", "n": 3, "b": true, "none": null, "some": 2, "list": ["a"], "nested": {"k": "v"}})
        );
        assert_eq!(crate::obj! {}, serde_json::json!({}));
    }

    #[test]
    fn urls_split_into_path_and_query() {
        assert_eq!(split_url("http://127.0.0.1:8787/api/plan/me"), ("/api/plan/me".into(), "".into()));
        assert_eq!(split_url("https://h/a/b?x=1&y=2#frag"), ("/a/b".into(), "x=1&y=2".into()));
        assert_eq!(split_url("https://h"), ("/".into(), "".into()));
        assert_eq!(split_url("https://h?x=1"), ("/".into(), "".into()));
    }

    /// Polls `fut` once: the streams in these tests are always ready.
    fn ready<F: Future>(fut: F) -> F::Output {
        match pin!(fut).poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("not ready"),
        }
    }

    #[test]
    fn a_streamed_body_is_read_up_to_its_limit_and_no_further() {
        let pulled = std::cell::Cell::new(0);
        let chunks = |n: usize, size: usize| {
            futures_util::stream::iter((0..n).map(move |_| Ok::<_, ()>(vec![b'x'; size]))).inspect(|_| {
                pulled.set(pulled.get() + 1);
            })
        };
        use futures_util::StreamExt;
        assert_eq!(ready(read_limited(chunks(4, 256), 1024)).map(|b| b.len()), Ok(1024));
        pulled.set(0);
        // 8 MiB offered in 64 KiB chunks against 1 MiB: refused after 17 chunks, not 128.
        assert_eq!(ready(read_limited(chunks(128, 64 * 1024), 1024 * 1024)), Err(Some(1024 * 1024)));
        assert_eq!(pulled.get(), 17);
        assert_eq!(ready(read_limited(chunks(0, 1), 10)), Ok(Vec::new()));
        assert_eq!(ready(read_limited(chunks(1, 11), 10)), Err(Some(10)));
        let failing = futures_util::stream::iter([Ok(vec![1u8]), Err("reset")]);
        assert_eq!(ready(read_limited(failing, 10)), Err(None));
    }

    fn host(url: &str) -> Option<String> {
        parse_authority(url).map(|a| a.host)
    }

    #[test]
    fn authorities_are_parsed_exactly() {
        let a = parse_authority("HTTPS://API.Stripe.com:8443/v1?x=1").unwrap();
        assert_eq!(
            (a.scheme.as_str(), a.host.as_str(), a.port, a.rest.as_str()),
            ("https", "api.stripe.com", Some(8443), "/v1?x=1")
        );
        let a = parse_authority("http://[::1]:8787").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.rest.as_str()), ("[::1]", Some(8787), ""));
        assert_eq!(host("http://localhost?q#f"), Some("localhost".into()));
        assert_eq!(host("http://127.0.0.1#frag"), Some("127.0.0.1".into()));
        // What a WHATWG parser would read differently, or that is not a plain authority.
        for bad in [
            "http://127.0.0.1@evil.test",
            "http://user:pass@localhost/",
            "http://localhost:80@evil.test",
            "http://localhost\\@evil.test",
            "http://local\thost/",
            "http://localhost /",
            " http://localhost",
            "http://localhost%2eevil.test",
            "http://lоcalhost", // Cyrillic о
            "http://",
            "http://:8080",
            "http://localhost:",
            "http://localhost:99999",
            "http://localhost:80a",
            "http://127.0.0.1:8080.evil.test",
            "http://[::1].evil.test",
            "http://[::1",
            "http://[]",
            "http://[::1%25eth0]",
            "localhost:8080",
            "http:localhost",
            "http:/localhost",
            "://localhost",
            "1http://localhost",
            "",
        ] {
            assert_eq!(parse_authority(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_https_or_http_on_an_exact_loopback_host_passes() {
        for good in [
            "https://www.googleapis.com/service_accounts/v1/jwk/x",
            "https://api.stripe.com",
            "https://api.stripe.com.", // a fully qualified name: https anyway
            "http://127.0.0.1:4242",
            "http://127.0.0.1/jwks",
            "http://localhost:9999/jwks",
            "HTTP://LOCALHOST:9999",
            "http://[::1]:4242",
            "http://[::1]",
        ] {
            assert!(is_https_or_loopback_http(good), "{good}");
        }
        for evil in [
            "http://localhost.evil.test",
            "http://localhost.evil.test/jwks",
            "http://127.0.0.1.evil.test",
            "http://127.0.0.1.nip.io:4242",
            "http://127.0.0.1@evil.test",
            "http://localhost@evil.test",
            "http://localhost:4242@evil.test/",
            "http://evil.test/127.0.0.1",
            "http://evil.test?localhost",
            "http://evil.test#@127.0.0.1",
            "http://localhost./", // trailing dots: not the exact spelling
            "http://127.0.0.1./",
            "http://127.0.0.2",
            "http://127.1",
            "http://2130706433",
            "http://0x7f000001",
            "http://[::2]",
            "http://[0:0:0:0:0:0:0:1]",
            "http://[::ffff:127.0.0.1]",
            "http://0.0.0.0",
            "http://stripe.evil.example",
            "ftp://localhost",
            "https://",
            "https://user@api.stripe.com",
            "localhost",
        ] {
            assert!(!is_https_or_loopback_http(evil), "{evil}");
        }
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let q = "status=fail%65d&limit=5&name=a+b&bad=%zz&empty";
        assert_eq!(query_param(q, "status").as_deref(), Some("failed"));
        assert_eq!(query_param(q, "limit").as_deref(), Some("5"));
        assert_eq!(query_param(q, "name").as_deref(), Some("a b"));
        assert_eq!(query_param(q, "bad").as_deref(), Some("%zz"));
        assert_eq!(query_param(q, "empty").as_deref(), Some(""));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(percent_decode("%E2%82%AC%"), "€%");
    }
}
