//! A thin D1 wrapper: typed parameters (integers bound as f64, because D1 cannot bind
//! a JS BigInt), every error mapped to `ApiError::Server` with the cause kept for the
//! log, and a running count of rows read/written from D1's result meta, reported per
//! request in the `X-D1-Rows-*` headers when `EXPOSE_D1_STATS` is on (`make bench`).

use std::cell::Cell;
use std::future::Future;

use futures_util::FutureExt;

use worker::js_sys::{Array, Reflect, JSON};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::worker_sys::{D1Database as D1DatabaseSys, D1Result as D1ResultSys};
use worker::{D1Database, D1PreparedStatement};

use crate::error::ApiError;

#[derive(Debug, Clone)]
pub enum Param {
    Int(i64),
    Text(String),
    Null,
}

impl Param {
    fn to_js(&self) -> JsValue {
        match self {
            Param::Int(i) => JsValue::from_f64(*i as f64),
            Param::Text(s) => JsValue::from_str(s),
            Param::Null => JsValue::NULL,
        }
    }
}

impl From<&str> for Param {
    fn from(s: &str) -> Self {
        Param::Text(s.to_string())
    }
}
impl From<String> for Param {
    fn from(s: String) -> Self {
        Param::Text(s)
    }
}
impl From<i64> for Param {
    fn from(i: i64) -> Self {
        Param::Int(i)
    }
}
impl<T: Into<Param>> From<Option<T>> for Param {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Param::Null)
    }
}

/// A D1 failure (a rejected promise or a thrown error) with its message, for the log.
fn d1_error(what: &str, e: JsValue) -> ApiError {
    ApiError::server(format!("{what}: {}", crate::fetch::message(e)))
}

/// A row type read by hand from a row's JSON object (see [`crate::util::Columns`]). Not serde's
/// `Deserialize`: no typed serde decoding is linked into the Wasm at all, and with it
/// went serde's error formatting of unexpected values (float formatting included).
pub trait FromRow: Sized {
    fn from_row(row: serde_json::Value) -> Result<Self, String>;
}

fn decode_rows<T: FromRow>(rows: Vec<serde_json::Value>) -> Result<Vec<T>, ApiError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(T::from_row(r).map_err(row_error)?);
    }
    Ok(out)
}

#[inline(never)]
pub(crate) fn row_error(e: String) -> ApiError {
    ApiError::server(format!("d1 row: {e}"))
}

/// D1's rows as JSON text (`JSON.stringify` of the results array) → the rows.
fn parse_rows(text: &str) -> Result<Vec<serde_json::Value>, ApiError> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Array(rows)) => Ok(rows),
        Ok(_) => Err(ApiError::server("d1 decode: not an array")),
        Err(e) => Err(ApiError::server(format!("d1 decode: {e}"))),
    }
}

pub struct Db {
    d1: D1Database,
    rows_read: Cell<usize>,
    rows_written: Cell<usize>,
    /// Calls to D1 (a statement or a batch each): the round trips of the request.
    round_trips: Cell<usize>,
}

/// One row as D1 returned it, read by column name.
pub struct Row(pub serde_json::Value);

impl Row {
    /// An integer column (D1 numbers arrive as JS numbers); `None` for NULL or absent.
    pub fn int(&self, column: &str) -> Option<i64> {
        let v = self.0.get(column)?;
        v.as_i64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
    }

    pub fn text(&self, column: &str) -> Option<String> {
        self.0.get(column)?.as_str().map(str::to_string)
    }
}

pub struct Stmt {
    pub sql: &'static str,
    pub params: Vec<Param>,
}

impl Db {
    pub fn new(d1: D1Database) -> Self {
        Db { d1, rows_read: Cell::new(0), rows_written: Cell::new(0), round_trips: Cell::new(0) }
    }

    pub fn rows_read(&self) -> usize {
        self.rows_read.get()
    }

    pub fn rows_written(&self) -> usize {
        self.rows_written.get()
    }

    pub fn round_trips(&self) -> usize {
        self.round_trips.get()
    }

    fn prepare(&self, sql: &str, params: &[Param]) -> Result<D1PreparedStatement, ApiError> {
        let values: Vec<JsValue> = params.iter().map(Param::to_js).collect();
        self.d1.prepare(sql).bind(&values).map_err(|e| ApiError::server(format!("d1 bind: {e}")))
    }

    /// Adds a result's `meta.rows_read/rows_written` to the request's counts.
    fn account(&self, result: &D1ResultSys) {
        if let Ok(meta) = result.meta() {
            let n =
                |name: &str| Reflect::get(&meta, &name.into()).ok().and_then(|v| v.as_f64()).unwrap_or(0.0) as usize;
            self.rows_read.set(self.rows_read.get() + n("rows_read"));
            self.rows_written.set(self.rows_written.get() + n("rows_written"));
        }
    }

    /// Runs a statement; every returned row as JSON. Not generic, so the async code
    /// exists once in the Wasm rather than once per row type. Rows cross from JS as one
    /// JSON text read by serde_json (the same decoder the rest of plangate uses) rather
    /// than through worker's serde-wasm-bindgen path, which would link a second one.
    async fn rows(&self, sql: &str, params: &[Param]) -> Result<Vec<serde_json::Value>, ApiError> {
        let promise = self.prepare(sql, params)?.inner().all().map_err(|e| d1_error("d1 query", e))?;
        self.round_trips.set(self.round_trips.get() + 1);
        let result: D1ResultSys = JsFuture::from(promise).await.map_err(|e| d1_error("d1 query", e))?.unchecked_into();
        self.account(&result);
        let Some(rows) = result.results().map_err(|e| d1_error("d1 results", e))? else {
            return Ok(Vec::new());
        };
        let text = JSON::stringify(&rows).map_err(|e| d1_error("d1 results", e))?;
        parse_rows(&String::from(text))
    }

    /// Runs a statement; its rows read by column name. For small answers (a count, a
    /// claim's columns) this costs no `Deserialize` code per row shape in the Wasm.
    pub fn rows_of<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [Param],
    ) -> impl Future<Output = Result<Vec<Row>, ApiError>> + 'a {
        self.rows(sql, params).map(|r| Ok(r?.into_iter().map(Row).collect()))
    }

    pub fn row<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [Param],
    ) -> impl Future<Output = Result<Option<Row>, ApiError>> + 'a {
        self.rows(sql, params).map(|r| Ok(r?.into_iter().next().map(Row)))
    }

    /// Runs a statement and reads every returned row as a `T`.
    pub fn query<'a, T: FromRow>(
        &'a self,
        sql: &'a str,
        params: &'a [Param],
    ) -> impl Future<Output = Result<Vec<T>, ApiError>> + 'a {
        self.rows(sql, params).map(|r| decode_rows(r?))
    }

    pub fn query_one<'a, T: FromRow>(
        &'a self,
        sql: &'a str,
        params: &'a [Param],
    ) -> impl Future<Output = Result<Option<T>, ApiError>> + 'a {
        self.rows(sql, params).map(|r| Ok(decode_rows(r?)?.into_iter().next()))
    }

    /// Runs a statement for its effect; returns how many rows it returned.
    pub fn execute<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [Param],
    ) -> impl Future<Output = Result<usize, ApiError>> + 'a {
        self.rows(sql, params).map(|r| Ok(r?.len()))
    }

    /// Runs the statements as one transaction (D1 has no `BEGIN`; a batch is atomic).
    pub async fn batch(&self, stmts: Vec<Stmt>) -> Result<(), ApiError> {
        self.run_batch(&stmts).await.map(|_| ())
    }

    /// Runs the statements as one transaction, in one round trip, and returns each
    /// statement's rows: a statement sees the effects of the ones before it.
    pub async fn batch_rows(&self, stmts: &[Stmt]) -> Result<Vec<Vec<Row>>, ApiError> {
        let results = self.run_batch(stmts).await?;
        let mut out = Vec::with_capacity(stmts.len());
        for r in results.iter() {
            let r: &D1ResultSys = r.unchecked_ref();
            let rows = match r.results().map_err(|e| d1_error("d1 results", e))? {
                Some(rows) => {
                    let text = JSON::stringify(&rows).map_err(|e| d1_error("d1 results", e))?;
                    parse_rows(&String::from(text))?
                }
                None => Vec::new(),
            };
            out.push(rows.into_iter().map(Row).collect());
        }
        Ok(out)
    }

    async fn run_batch(&self, stmts: &[Stmt]) -> Result<Array, ApiError> {
        let prepared = Array::new();
        for s in stmts {
            prepared.push(self.prepare(s.sql, &s.params)?.inner());
        }
        let sys: &D1DatabaseSys = self.d1.as_ref().unchecked_ref();
        let promise = sys.batch(prepared).map_err(|e| d1_error("d1 batch", e))?;
        self.round_trips.set(self.round_trips.get() + 1);
        let results = Array::from(&JsFuture::from(promise).await.map_err(|e| d1_error("d1 batch", e))?);
        for r in results.iter() {
            self.account(r.unchecked_ref());
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::Row;
    use serde_json::json;

    #[test]
    fn row_columns_are_read_by_name_whatever_number_form_d1_used() {
        let r = Row(json!({"n": 3, "f": 4.0, "half": 1.5, "s": "x", "null": null}));
        assert_eq!((r.int("n"), r.int("f"), r.int("half")), (Some(3), Some(4), None));
        assert_eq!(
            (r.text("s").as_deref(), r.text("n"), r.int("null"), r.int("absent")),
            (Some("x"), None, None, None)
        );
    }
}
