//! Structured logs: one JSON object per line, always with the request id. Never pass
//! secrets, tokens or request bodies in here.

use serde_json::{json, Map, Value};

pub fn line(level: &str, request_id: &str, event: &str, fields: Value) {
    let mut obj = Map::new();
    obj.insert("level".into(), json!(level));
    obj.insert("event".into(), json!(event));
    obj.insert("requestId".into(), json!(request_id));
    if let Value::Object(extra) = fields {
        obj.extend(extra);
    }
    let text = Value::Object(obj).to_string();
    match level {
        "error" => worker::console_error!("{text}"),
        "warn" => worker::console_warn!("{text}"),
        _ => worker::console_log!("{text}"),
    }
}

pub fn info(request_id: &str, event: &str, fields: Value) {
    line("info", request_id, event, fields)
}

pub fn warn(request_id: &str, event: &str, fields: Value) {
    line("warn", request_id, event, fields)
}

pub fn error(request_id: &str, event: &str, fields: Value) {
    line("error", request_id, event, fields)
}
