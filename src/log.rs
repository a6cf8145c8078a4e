//! Structured logs: one JSON object per line, always with the request id. Never pass
//! secrets, tokens or request bodies in here.

use serde_json::Value;

pub fn line(level: &str, request_id: &str, event: &str, fields: Value) {
    let mut obj = crate::obj! {"level": level, "event": event, "requestId": request_id};
    if let (Some(obj), Value::Object(extra)) = (obj.as_object_mut(), fields) {
        obj.extend(extra);
    }
    let text = worker::wasm_bindgen::JsValue::from(crate::util::json_text(&obj));
    // The console directly: worker's console_* macros format their argument again.
    use worker::web_sys::console;
    match level {
        "error" => console::error_1(&text),
        "warn" => console::warn_1(&text),
        _ => console::log_1(&text),
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
