//! One page of a KV namespace's keys, read by calling the binding's `list()` directly:
//! worker's `ListOptionsBuilder::execute` decodes the answer with serde-wasm-bindgen,
//! a second JSON-ish decoder in the Wasm; here it crosses as JSON text read by
//! serde_json, like D1 rows (see `db.rs`).

use worker::js_sys::{Function, Object, Promise, Reflect, JSON};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;

/// Key names of one page, and the cursor of the next (`None`: the listing is complete).
pub struct Page {
    pub keys: Vec<String>,
    pub cursor: Option<String>,
}

/// `env[binding].list({prefix, limit, cursor})`.
pub async fn page(
    env: &worker::Env,
    binding: &str,
    prefix: &str,
    limit: u64,
    cursor: Option<&str>,
) -> Result<Page, String> {
    let fail = |e: JsValue| format!("{binding} list: {}", crate::fetch::message(e));
    let ns = Reflect::get(env, &binding.into()).map_err(fail)?;
    let list: Function = Reflect::get(&ns, &"list".into()).map_err(fail)?.dyn_into().map_err(fail)?;
    let opts = Object::new();
    let set = |k: &str, v: JsValue| Reflect::set(&opts, &k.into(), &v).map(|_| ()).map_err(fail);
    set("prefix", prefix.into())?;
    set("limit", JsValue::from_f64(limit as f64))?;
    if let Some(c) = cursor.filter(|c| !c.is_empty()) {
        set("cursor", c.into())?;
    }
    let promise: Promise = list.call1(&ns, &opts).map_err(fail)?.dyn_into().map_err(fail)?;
    let result = JsFuture::from(promise).await.map_err(fail)?;
    let text = String::from(JSON::stringify(&result).map_err(fail)?);
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{binding} list: {e}"))?;
    let keys = v["keys"]
        .as_array()
        .map_or_else(Vec::new, |keys| keys.iter().filter_map(|k| k["name"].as_str().map(str::to_string)).collect());
    let complete = v["list_complete"].as_bool() != Some(false);
    let cursor = v["cursor"].as_str().filter(|c| !complete && !c.is_empty()).map(str::to_string);
    Ok(Page { keys, cursor })
}
