//! Outgoing HTTP (Stripe, the JWKS) through the runtime's `fetch` directly. worker's
//! `Fetch`/`RequestInit` serialise Cloudflare-specific request options with a second
//! serde serializer on every call; plangate needs a method, headers and a text body.

use worker::js_sys;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::{Headers, RequestInit, Response, WorkerGlobalScope};

/// What plangate reads of an answer.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub cache_control: Option<String>,
}

/// The message of a JS error or rejection, for logs.
pub fn message(e: JsValue) -> String {
    match e.dyn_ref::<js_sys::Error>() {
        Some(err) => String::from(err.message()),
        None => e.as_string().unwrap_or_else(|| "fetch failed".into()),
    }
}

/// One request; `Err` only when no answer arrived (network, invalid URL).
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Result<Answer, String> {
    let h = Headers::new().map_err(message)?;
    for (k, v) in headers {
        h.set(k, v).map_err(message)?;
    }
    let init = RequestInit::new();
    init.set_method(method);
    init.set_headers(&h);
    if let Some(b) = body {
        init.set_body(&JsValue::from_str(b));
    }
    let global: WorkerGlobalScope = js_sys::global().unchecked_into();
    let resp: Response =
        JsFuture::from(global.fetch_with_str_and_init(url, &init)).await.map_err(message)?.unchecked_into();
    let cache_control = resp.headers().get("cache-control").ok().flatten();
    let text = JsFuture::from(resp.text().map_err(message)?).await.map_err(message)?;
    Ok(Answer { status: resp.status(), body: text.as_string().unwrap_or_default(), cache_control })
}
