//! The one place the Worker reads the wall clock. `std::time::SystemTime::now()`
//! panics on wasm32; everything below the handlers takes `now` as an argument.

/// Unix seconds.
pub fn now() -> i64 {
    (worker::Date::now().as_millis() / 1000) as i64
}
