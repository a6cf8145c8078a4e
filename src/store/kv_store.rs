//! A KV namespace binding, called directly through its JS methods (`get`, `put`,
//! `delete`, `list`). worker's `KvStore` builds every options object with
//! serde-wasm-bindgen, which linked a second serializer (and its string cache and JS
//! imports) into the Wasm for `{expirationTtl}` and `{type: "text"}`; plangate needs
//! only these calls. The method names and shapes follow worker's, so callers read the
//! same. The one wrapper for `APP_KV` and `LEGACY_AUTH_KV` alike.

use std::fmt;

use worker::js_sys::{Array, Function, Map as JsMap, Object, Promise, Reflect, Uint8Array};
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

    /// The text values of `keys` (at most 100) in one operation (the runtime's bulk
    /// `get`, answered as a `Map`), `None` for a missing key.
    pub async fn get_texts(&self, keys: &[String]) -> Result<Vec<Option<String>>, KvError> {
        let names = Array::new();
        for k in keys {
            names.push(&JsValue::from_str(k));
        }
        let found = self.call("get", &[names.as_ref(), &JsValue::from_str("text")]).await?;
        let map: JsMap = found.dyn_into().map_err(|_| KvError("get: not a Map".into()))?;
        Ok(names.iter().map(|k| map.get(&k).as_string()).collect())
    }

    /// One page of the keys starting with `prefix`, after `cursor` (`None` or `""`: the
    /// start): `list({prefix, limit, cursor})`, its answer read by property (worker's
    /// builder decodes it with serde-wasm-bindgen).
    pub async fn list(&self, prefix: &str, limit: u64, cursor: Option<&str>) -> Result<ListPage, KvError> {
        let options = Object::new();
        Reflect::set(&options, &JsValue::from_str("prefix"), &JsValue::from_str(prefix))?;
        Reflect::set(&options, &JsValue::from_str("limit"), &JsValue::from_f64(limit as f64))?;
        if let Some(c) = cursor.filter(|c| !c.is_empty()) {
            Reflect::set(&options, &JsValue::from_str("cursor"), &JsValue::from_str(c))?;
        }
        let page = self.call("list", &[options.as_ref()]).await?;
        let get = |k: &str| Reflect::get(&page, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED);
        let listed: Array = get("keys").dyn_into().map_err(|_| KvError("list: no keys".into()))?;
        let mut keys = Vec::new();
        for k in listed.iter() {
            keys.extend(Reflect::get(&k, &JsValue::from_str("name")).ok().and_then(|n| n.as_string()));
        }
        let more = get("list_complete").as_bool() == Some(false);
        Ok(ListPage { keys, cursor: get("cursor").as_string().filter(|c| more && !c.is_empty()) })
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
