//! Small async helpers for the Worker runtime.

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
    fn urls_split_into_path_and_query() {
        assert_eq!(split_url("http://127.0.0.1:8787/api/plan/me"), ("/api/plan/me".into(), "".into()));
        assert_eq!(split_url("https://h/a/b?x=1&y=2#frag"), ("/a/b".into(), "x=1&y=2".into()));
        assert_eq!(split_url("https://h"), ("/".into(), "".into()));
        assert_eq!(split_url("https://h?x=1"), ("/".into(), "".into()));
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
