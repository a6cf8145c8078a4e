//! Customer records of the legacy customer API, pure: the `LEGACY_AUTH_KV` key formats,
//! the reading of a legacy record whatever its shape, the record as the API shows it
//! (the legacy JSON field names), and what `PATCH /customer/me` may change.
//!
//! A legacy record is `customer_<customerId>` → JSON `{customerId, name, email,
//! companyName, plan, tier, status, subscriptions[], flairs[], displayName, config,
//! features, createdAt, updatedAt}`, any field missing or odd; an email mapping is
//! `email_to_customer_<sha256 hex of lower(trim(email))>` → the customerId. Nothing is
//! guessed and nothing dropped: a known field of the wrong type, a date that cannot be
//! read and every unknown field are kept as they were in `extra`.

use serde_json::{Map, Value};

use super::time::{iso8601, parse_iso8601};

pub const RECORD_PREFIX: &str = "customer_";
pub const EMAIL_PREFIX: &str = "email_to_customer_";
/// Longest customerId accepted from the API (legacy ids are taken as they are).
pub const MAX_ID_LEN: usize = 128;
/// Longest text a profile field may hold.
pub const MAX_TEXT_LEN: usize = 200;
/// Largest `config` a profile update may store (its JSON text).
pub const MAX_CONFIG_BYTES: usize = 16 * 1024;

/// The text fields: (legacy JSON name, D1 column). `email` is first.
pub const TEXT_FIELDS: [(&str, &str); 7] = [
    ("email", "email"),
    ("name", "name"),
    ("displayName", "display_name"),
    ("companyName", "company_name"),
    ("plan", "plan"),
    ("tier", "tier"),
    ("status", "status"),
];
/// Fields holding any JSON, kept as given.
pub const JSON_FIELDS: [(&str, &str); 4] =
    [("subscriptions", "subscriptions"), ("flairs", "flairs"), ("config", "config"), ("features", "features")];
/// Dates: unix seconds in D1, ISO-8601 in the API.
pub const TIME_FIELDS: [(&str, &str); 2] = [("createdAt", "created_at"), ("updatedAt", "updated_at")];

const EMAIL: usize = 0;
const CONFIG: usize = 2;

/// Fields that are plangate's (billing), never written through the customer API.
pub const PLANGATE_FIELDS: [&str; 6] = ["plan", "tier", "status", "subscriptions", "flairs", "features"];
/// Fields a customer may change about themself.
pub const PROFILE_FIELDS: [&str; 4] = ["name", "displayName", "companyName", "config"];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Customer {
    pub id: String,
    /// In [`TEXT_FIELDS`] order.
    pub text: [Option<String>; 7],
    /// In [`JSON_FIELDS`] order.
    pub json: [Option<Value>; 4],
    /// `createdAt`, `updatedAt`: unix seconds.
    pub times: [Option<i64>; 2],
    /// Every other field of the record, as it was.
    pub extra: Map<String, Value>,
}

/// `lower(trim(email))`, the form the legacy mapping hashed. In the Worker it is
/// JavaScript's own `toLowerCase` (what the legacy writers ran), which also spares the
/// Wasm Rust's Unicode case tables; natively (tests) Rust's, which agrees with it.
pub fn normalize_email(email: &str) -> String {
    let e = email.trim();
    if e.is_ascii() {
        return e.to_ascii_lowercase();
    }
    #[cfg(target_arch = "wasm32")]
    return String::from(js_sys::JsString::from(e).to_lower_case());
    #[cfg(not(target_arch = "wasm32"))]
    e.to_lowercase()
}

/// The sha256 hex of the normalised email; `None` for a blank one.
pub fn email_hash(email: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    let n = normalize_email(email);
    (!n.is_empty()).then(|| hex::encode(Sha256::digest(n.as_bytes())))
}

pub fn record_key(id: &str) -> String {
    format!("{RECORD_PREFIX}{id}")
}

/// A mapping's value: the customerId (tolerating a JSON-quoted one).
pub fn mapped_id(text: &str) -> String {
    text.trim().trim_matches('"').to_string()
}

pub fn email_key(hash: &str) -> String {
    format!("{EMAIL_PREFIX}{hash}")
}

impl Customer {
    pub fn email(&self) -> Option<&str> {
        self.text[EMAIL].as_deref()
    }

    pub fn email_hash(&self) -> Option<String> {
        self.email().and_then(email_hash)
    }

    /// A record from its JSON. `key_id` is the id the record's key names: a record
    /// without `customerId` takes it, one whose `customerId` differs is refused.
    pub fn from_legacy(key_id: Option<&str>, value: Value) -> Result<Customer, String> {
        let Value::Object(obj) = value else {
            return Err("not a JSON object".into());
        };
        let mut c = Customer::default();
        // Consumed in one pass, each field matched by name: removing fields one by one
        // would link the B-tree's removal code.
        for (name, v) in obj {
            let text = TEXT_FIELDS.iter().position(|(n, _)| *n == name);
            let json = JSON_FIELDS.iter().position(|(n, _)| *n == name);
            let time = TIME_FIELDS.iter().position(|(n, _)| *n == name);
            match (name.as_str(), v) {
                (_, Value::Null) => {}
                ("customerId", Value::String(s)) if !s.is_empty() => c.id = s,
                ("customerId", Value::Number(n)) if n.is_u64() => c.id = n.to_string(),
                ("customerId", other) => {
                    return Err(format!("customerId is not a string: {}", crate::util::json_text(&other)))
                }
                (_, Value::String(s)) if text.is_some() => c.text[text.unwrap_or_default()] = Some(s),
                (_, v) if json.is_some() => c.json[json.unwrap_or_default()] = Some(v),
                (_, v) if time.is_some() && parse_time(&v).is_some() => {
                    c.times[time.unwrap_or_default()] = parse_time(&v)
                }
                (_, v) => {
                    c.extra.insert(name, v);
                }
            }
        }
        match key_id {
            Some(k) if c.id.is_empty() => c.id = k.to_string(),
            Some(k) if k != c.id => return Err(format!("customerId `{}` differs from the key's", c.id)),
            None if c.id.is_empty() => return Err("no customerId".into()),
            _ => {}
        }
        Ok(c)
    }

    /// The record with the legacy field names: what the API answers and what a dual
    /// write stores. Absent fields are left out; dates are ISO-8601; the fields kept in
    /// `extra` come back as they were.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("customerId".into(), self.id.as_str().into());
        for (i, (name, _)) in TEXT_FIELDS.iter().enumerate() {
            if let Some(s) = &self.text[i] {
                obj.insert(name.to_string(), s.as_str().into());
            }
        }
        for (i, (name, _)) in JSON_FIELDS.iter().enumerate() {
            if let Some(v) = &self.json[i] {
                obj.insert(name.to_string(), v.clone());
            }
        }
        for (i, (name, _)) in TIME_FIELDS.iter().enumerate() {
            if let Some(t) = self.times[i] {
                obj.insert(name.to_string(), iso8601(t).into());
            }
        }
        for (k, v) in &self.extra {
            obj.entry(k.as_str()).or_insert_with(|| v.clone());
        }
        Value::Object(obj)
    }

    /// Applies a profile update (`PATCH /customer/me`, or the body of a user's own
    /// `POST /customer`): only [`PROFILE_FIELDS`]; `null` clears one.
    pub fn apply_profile(&mut self, body: &Map<String, Value>) -> Result<(), ProfileError> {
        for (name, value) in body {
            let text_index = TEXT_FIELDS.iter().position(|(n, _)| n == name);
            match (name.as_str(), value) {
                ("config", Value::Null) => self.json[CONFIG] = None,
                ("config", Value::Object(_)) if crate::util::json_text(value).len() <= MAX_CONFIG_BYTES => {
                    self.json[CONFIG] = Some(value.clone())
                }
                ("config", _) => {
                    return Err(ProfileError::Invalid(format!(
                        "config must be a JSON object of at most {MAX_CONFIG_BYTES} bytes, or null"
                    )))
                }
                (n, _) if !PROFILE_FIELDS.contains(&n) => {
                    let known = PLANGATE_FIELDS.contains(&n)
                        || ["customerId", "email", "createdAt", "updatedAt", "userId"].contains(&n);
                    return Err(if known {
                        ProfileError::NotWritable(n.to_string())
                    } else {
                        ProfileError::Invalid(format!(
                            "unknown field `{}`; a profile has {}",
                            n.chars().take(40).collect::<String>(),
                            PROFILE_FIELDS.join(", ")
                        ))
                    });
                }
                (_, Value::Null) => self.text[text_index.unwrap_or_default()] = None,
                (_, Value::String(s))
                    if !s.trim().is_empty()
                        && s.chars().count() <= MAX_TEXT_LEN
                        && !s.chars().any(char::is_control) =>
                {
                    self.text[text_index.unwrap_or_default()] = Some(s.clone())
                }
                (n, _) => {
                    return Err(ProfileError::Invalid(format!(
                        "{n} must be a non-empty string of at most {MAX_TEXT_LEN} characters, or null"
                    )))
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileError {
    /// A field that exists but is not the customer's to change (plan fields, ids).
    NotWritable(String),
    Invalid(String),
}

/// Whether `id` may name a record created through the API: 1 to [`MAX_ID_LEN`]
/// printable ASCII characters without spaces or `/`.
pub fn valid_new_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

/// Whether `email` can be a record's email: `@` inside, at most 320 bytes, no control
/// characters.
pub fn valid_email(email: &str) -> bool {
    let e = email.trim();
    e.len() <= 320 && e.find('@').is_some_and(|at| at > 0 && at + 1 < e.len()) && !e.chars().any(char::is_control)
}

/// A legacy date: unix **milliseconds** (from 1e11 on), unix seconds below that, either
/// as a number or digits in a string, or ISO-8601 text. Negative, fractional-garbage
/// and far-future values are unreadable (`None`).
pub fn parse_time(v: &Value) -> Option<i64> {
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let t = s.trim();
            if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                // Whole digits only (a fraction of a second or millisecond does not
                // matter); parsed as an integer: float parsing would link its tables.
                let (whole, fraction) = t.split_once('.').unwrap_or((t, "0"));
                if whole.is_empty() || fraction.is_empty() || fraction.contains('.') {
                    return None;
                }
                whole.parse::<u64>().ok()? as f64
            } else {
                return parse_iso8601(t);
            }
        }
        _ => return None,
    };
    if !n.is_finite() || !(0.0..1e14).contains(&n) {
        return None;
    }
    Some(if n >= 1e11 { (n / 1000.0).floor() } else { n.floor() } as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(key_id: Option<&str>, v: Value) -> Result<Customer, String> {
        Customer::from_legacy(key_id, v)
    }

    #[test]
    fn the_legacy_key_formats_are_pinned() {
        assert_eq!(record_key("c_123"), "customer_c_123");
        // sha256("alice@example.com"), after lower(trim()).
        let h = "ff8d9819fc0e12bf0d24892e45987e249a28dce836a85cad60e28eaaa8c6d976";
        assert_eq!(email_hash("  Alice@Example.COM \n").as_deref(), Some(h));
        assert_eq!(email_key(h), format!("email_to_customer_{h}"));
        assert_eq!(email_hash("   "), None);
        assert_eq!(normalize_email(" A@B.c "), "a@b.c");
        assert_eq!(normalize_email(" ÉLODIE@Exemple.FR"), "élodie@exemple.fr");
    }

    #[test]
    fn a_full_record_is_read_into_its_fields_and_shown_with_the_legacy_names() {
        let v = json!({
            "customerId": "c1", "name": "Ann", "email": "Ann@Example.com", "companyName": "Acme",
            "plan": "pro", "tier": "gold", "status": "active",
            "subscriptions": [{"id": "s1"}], "flairs": ["early"], "displayName": "ann",
            "config": {"theme": "dark"}, "features": {"beta": true},
            "createdAt": "2023-11-14T22:13:20.000Z", "updatedAt": 1_700_000_100_000_i64,
        });
        let c = parse(Some("c1"), v).unwrap();
        assert_eq!(c.id, "c1");
        assert_eq!(c.email(), Some("Ann@Example.com"));
        assert_eq!(c.email_hash(), email_hash("ann@example.com"));
        assert_eq!(c.text[3].as_deref(), Some("Acme"));
        assert_eq!(c.json[0], Some(json!([{"id": "s1"}])));
        assert_eq!(c.times, [Some(1_700_000_000), Some(1_700_000_100)]);
        assert!(c.extra.is_empty());
        assert_eq!(
            c.to_json(),
            json!({
                "customerId": "c1", "name": "Ann", "email": "Ann@Example.com", "companyName": "Acme",
                "plan": "pro", "tier": "gold", "status": "active",
                "subscriptions": [{"id": "s1"}], "flairs": ["early"], "displayName": "ann",
                "config": {"theme": "dark"}, "features": {"beta": true},
                "createdAt": "2023-11-14T22:13:20Z", "updatedAt": "2023-11-14T22:15:00Z",
            })
        );
    }

    #[test]
    fn odd_fields_and_unknown_ones_are_kept_in_extra_and_come_back_unchanged() {
        let v = json!({
            "customerId": 42, "name": 7, "email": null, "plan": ["pro"], "createdAt": "yesterday",
            "updatedAt": -5, "subscriptions": {"not": "a list"}, "legacyFlag": true, "nested": {"a": [1]},
        });
        let c = parse(Some("42"), v).unwrap();
        assert_eq!(c.id, "42", "a numeric customerId is its decimal text");
        assert_eq!((c.text[0].as_ref(), c.text[1].as_ref(), c.text[4].as_ref()), (None, None, None));
        assert_eq!(c.times, [None, None]);
        assert_eq!(c.json[0], Some(json!({"not": "a list"})), "JSON fields are kept whatever their shape");
        assert_eq!(
            Value::Object(c.extra.clone()),
            json!({"name": 7, "plan": ["pro"], "createdAt": "yesterday", "updatedAt": -5,
                   "legacyFlag": true, "nested": {"a": [1]}})
        );
        assert_eq!(
            c.to_json(),
            json!({"customerId": "42", "name": 7, "plan": ["pro"], "createdAt": "yesterday", "updatedAt": -5,
                   "subscriptions": {"not": "a list"}, "legacyFlag": true, "nested": {"a": [1]}})
        );
        // Round trip: what a dual write stores reads back as the same record.
        assert_eq!(parse(Some("42"), c.to_json()).unwrap(), c);
    }

    #[test]
    fn the_key_names_the_record_and_a_record_that_disagrees_is_refused() {
        assert_eq!(parse(Some("c9"), json!({"name": "x"})).unwrap().id, "c9");
        assert_eq!(parse(Some("c9"), json!({"customerId": null})).unwrap().id, "c9");
        assert!(parse(Some("c9"), json!({"customerId": "c8"})).unwrap_err().contains("differs"));
        assert!(parse(None, json!({"name": "x"})).unwrap_err().contains("no customerId"));
        assert!(parse(Some("c9"), json!({"customerId": ["c9"]})).is_err());
        assert!(parse(Some("9.5"), json!({"customerId": 9.5})).is_err(), "a fractional id is no id");
        assert!(parse(Some("c9"), json!({"customerId": ""})).is_err());
        for not_object in [json!([]), json!("c9"), json!(3), Value::Null] {
            assert_eq!(parse(Some("c9"), not_object).unwrap_err(), "not a JSON object");
        }
    }

    #[test]
    fn legacy_dates_are_read_as_milliseconds_seconds_or_iso_text() {
        for (v, want) in [
            (json!(1_700_000_000_000_i64), Some(1_700_000_000)),
            (json!(1_700_000_000_999_i64), Some(1_700_000_000)),
            (json!(1_700_000_000), Some(1_700_000_000)),
            (json!(1_700_000_000.5), Some(1_700_000_000)),
            (json!("1700000000000"), Some(1_700_000_000)),
            (json!(" 1700000000 "), Some(1_700_000_000)),
            (json!("1700000000.75"), Some(1_700_000_000)),
            (json!("1700000000."), None),
            (json!(".5"), None),
            (json!("2023-11-14T22:13:20Z"), Some(1_700_000_000)),
            (json!("2023-11-14T23:13:20+01:00"), Some(1_700_000_000)),
            (json!("2023-11-14"), Some(1_699_920_000)),
            (json!(99_999_999_999_i64), Some(99_999_999_999)),
            (json!(100_000_000_000_i64), Some(100_000_000)),
            (json!(0), Some(0)),
            (json!(-1), None),
            (json!(1e14), None),
            (json!("1.2.3"), None),
            (json!("Nov 14 2023"), None),
            (json!(""), None),
            (json!(true), None),
            (json!({"seconds": 1}), None),
        ] {
            assert_eq!(parse_time(&v), want, "{v}");
        }
    }

    #[test]
    fn a_profile_update_changes_profile_fields_only_and_names_what_it_refuses() {
        let mut c = parse(Some("c1"), json!({"name": "Ann", "plan": "pro", "config": {"a": 1}})).unwrap();
        let body = |v: Value| v.as_object().unwrap().clone();
        c.apply_profile(&body(json!({"displayName": "A", "companyName": "Acme", "name": null, "config": {"b": 2}})))
            .unwrap();
        assert_eq!(
            c.to_json(),
            json!({"customerId": "c1", "displayName": "A", "companyName": "Acme", "plan": "pro", "config": {"b": 2}})
        );
        for field in PLANGATE_FIELDS.iter().chain(&["customerId", "email", "createdAt", "userId"]) {
            let before = c.clone();
            let e = c.apply_profile(&body(json!({ *field: "x" }))).unwrap_err();
            assert_eq!(e, ProfileError::NotWritable(field.to_string()));
            assert_eq!(c, before);
        }
        for bad in [
            json!({"name": ""}),
            json!({"name": "  "}),
            json!({"name": 3}),
            json!({"name": "a\nb"}),
            json!({"name": "x".repeat(201)}),
            json!({"config": "dark"}),
            json!({"config": [1]}),
            json!({"config": {"big": "x".repeat(MAX_CONFIG_BYTES)}}),
            json!({"nickname": "x"}),
        ] {
            assert!(matches!(c.apply_profile(&body(bad.clone())), Err(ProfileError::Invalid(_))), "{bad}");
        }
        c.apply_profile(&body(json!({"config": null, "name": "x".repeat(200)}))).unwrap();
        assert_eq!(c.json[2], None);
    }

    #[test]
    fn ids_and_emails_given_to_the_api_are_checked() {
        assert!(valid_new_id("cust_0123abc") && valid_new_id("a.b-c@d:e"));
        for bad in ["", "a b", "a/b", "é", &"x".repeat(129)] {
            assert!(!valid_new_id(bad), "{bad}");
        }
        assert!(valid_email("a@b.c") && valid_email(" a@b "));
        for bad in ["", "ab", "@b", "a@", "a@b\n.c", &format!("a@{}", "b".repeat(320))] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
