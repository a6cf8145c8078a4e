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
    getrandom::fill(&mut buf)
        .map_err(|e| crate::error::ApiError::server(format!("getrandom: {e}")))?;
    Ok(hex::encode(buf))
}
