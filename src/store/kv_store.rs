//! A KV namespace binding, called directly through its JS methods (`get`, `put`,
//! `delete`). worker's `KvStore` builds every options object with serde-wasm-bindgen,
//! which linked a second serializer (and its string cache and JS imports) into the
//! Wasm for `{expirationTtl}` and `{type: "text"}`; plangate needs only these three
//! calls. The method names and shapes follow worker's, so callers read the same.

use std::fmt;

use worker::js_sys::{Function, Object, Promise, Reflect, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::Env;

/// A failed KV call: the JS error's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvError(pub String);

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kv: {}", self.0)
    }
}

impl From<JsValue> for KvError {
    fn from(e: JsValue) -> Self {
        KvError(crate::fetch::message(e))
    }
}

#[derive(Clone)]
pub struct KvStore {
    this: Object,
}

impl KvStore {
    /// The namespace bound as `binding`; `None` when there is none.
    pub fn from_env(env: &Env, binding: &str) -> Option<KvStore> {
        let this = Reflect::get(env, &JsValue::from_str(binding)).ok()?;
        this.is_object().then(|| KvStore { this: this.unchecked_into() })
    }

    /// Calls `this[method](args…)` and waits for its promise.
    async fn call(&self, method: &str, args: &[&JsValue]) -> Result<JsValue, KvError> {
        let f: Function = Reflect::get(&self.this, &JsValue::from_str(method))?.dyn_into()?;
        let promise = match args {
            [a] => f.call1(&self.this, a)?,
            [a, b] => f.call2(&self.this, a, b)?,
            [a, b, c] => f.call3(&self.this, a, b, c)?,
            _ => f.call0(&self.this)?,
        };
        Ok(JsFuture::from(Promise::from(promise)).await?)
    }

    /// The value of `key` as text; `None` when there is none.
    pub async fn get_text(&self, key: &str) -> Result<Option<String>, KvError> {
        Ok(self.call("get", &[&JsValue::from_str(key), &JsValue::from_str("text")]).await?.as_string())
    }

    /// A put of `value` (stored as bytes), run by [`KvPut::execute`].
    pub fn put_bytes(&self, key: &str, value: &[u8]) -> Result<KvPut, KvError> {
        Ok(KvPut { store: self.clone(), key: key.to_string(), value: Uint8Array::from(value), expiration_ttl: None })
    }

    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.call("delete", &[&JsValue::from_str(key)]).await.map(|_| ())
    }

    /// One page of the keys starting with `prefix`, after `cursor`: `list({prefix,
    /// limit, cursor})`, its answer read as JSON text by serde_json (worker's builder
    /// decodes it with serde-wasm-bindgen).
    pub async fn list(&self, prefix: &str, limit: u64, cursor: Option<&str>) -> Result<ListPage, KvError> {
        let options = Object::new();
        Reflect::set(&options, &JsValue::from_str("prefix"), &JsValue::from_str(prefix))?;
        Reflect::set(&options, &JsValue::from_str("limit"), &JsValue::from_f64(limit as f64))?;
        if let Some(c) = cursor.filter(|c| !c.is_empty()) {
            Reflect::set(&options, &JsValue::from_str("cursor"), &JsValue::from_str(c))?;
        }
        let answer = self.call("list", &[options.as_ref()]).await?;
        let text = String::from(worker::js_sys::JSON::stringify(&answer)?);
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| KvError(e.to_string()))?;
        let keys = v["keys"]
            .as_array()
            .map_or_else(Vec::new, |keys| keys.iter().filter_map(|k| k["name"].as_str().map(str::to_string)).collect());
        let complete = v["list_complete"].as_bool() != Some(false);
        let cursor = v["cursor"].as_str().filter(|c| !complete && !c.is_empty()).map(str::to_string);
        Ok(ListPage { keys, cursor })
    }
}

/// Key names of one page of a listing, and the cursor of the next (`None`: complete).
pub struct ListPage {
    pub keys: Vec<String>,
    pub cursor: Option<String>,
}

#[must_use = "a KvPut does nothing until it is executed"]
pub struct KvPut {
    store: KvStore,
    key: String,
    value: Uint8Array,
    expiration_ttl: Option<u64>,
}

impl KvPut {
    /// Seconds until the value expires.
    pub fn expiration_ttl(mut self, seconds: u64) -> Self {
        self.expiration_ttl = Some(seconds);
        self
    }

    pub async fn execute(self) -> Result<(), KvError> {
        let options = Object::new();
        if let Some(ttl) = self.expiration_ttl {
            Reflect::set(&options, &JsValue::from_str("expirationTtl"), &JsValue::from_f64(ttl as f64))?;
        }
        let args = [&JsValue::from_str(&self.key), &self.value.buffer().into(), options.as_ref()];
        self.store.call("put", &args).await.map(|_| ())
    }
}
