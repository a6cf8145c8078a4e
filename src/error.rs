//! The one API error type. Every failure a client can see is one of these, rendered as
//! `{"ok":false,"code":"…","message":"…"}` with its status. Server-side causes are
//! carried for the log line only and never rendered.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Missing, malformed, expired or unverifiable credentials. The detail is safe to
    /// show (it names the check that failed, never key material).
    AuthRequired(&'static str),
    Forbidden(&'static str),
    NotFound,
    MethodNotAllowed {
        allow: &'static [&'static str],
    },
    PayloadTooLarge {
        limit: u64,
    },
    InvalidRequest(String),
    /// A documented, endpoint-specific failure (`INVALID_SIGNATURE`, `ALREADY_ON_PLAN`…)
    /// whose message is safe to show.
    Coded {
        status: u16,
        code: &'static str,
        message: String,
    },
    /// `ALREADY_SUBSCRIBED` and the like: also says which plan the user is on.
    CodedPlan {
        status: u16,
        code: &'static str,
        message: String,
        plan: String,
    },
    /// `PAYMENT_PENDING` (409): a subscription that may still become live blocks a
    /// new one; says which, its status, and where to pay it when Stripe has a page.
    PaymentPending {
        subscription_status: String,
        invoice_url: Option<String>,
    },
    /// A documented failure whose body carries more fields (`QUOTA_EXCEEDED` with
    /// `limit`, `used`, `resetsAt`; `INSUFFICIENT_CREDITS` with `balance`, `required`…).
    Detailed {
        status: u16,
        code: &'static str,
        message: String,
        fields: serde_json::Value,
    },
    /// A server-side failure with its own code (`WEBHOOK_NOT_CONFIGURED`, …): the
    /// public message is fixed, the cause goes to the log only.
    CodedServer {
        status: u16,
        code: &'static str,
        public: &'static str,
        cause: String,
    },
    /// Anything that is our fault or a dependency's. The cause goes to the log only.
    Server(String),
}

impl ApiError {
    pub fn server(cause: impl fmt::Display) -> Self {
        ApiError::Server(cause.to_string())
    }

    pub fn coded(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Coded { status, code, message: message.into() }
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::AuthRequired(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::InvalidRequest(_) => 400,
            ApiError::PaymentPending { .. } => 409,
            ApiError::Coded { status, .. }
            | ApiError::Detailed { status, .. }
            | ApiError::CodedServer { status, .. }
            | ApiError::CodedPlan { status, .. } => *status,
            ApiError::Server(_) => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::AuthRequired(_) => "AUTH_REQUIRED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::NotFound => "NOT_FOUND",
            ApiError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            ApiError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            ApiError::InvalidRequest(_) => "INVALID_REQUEST",
            ApiError::PaymentPending { .. } => "PAYMENT_PENDING",
            ApiError::Coded { code, .. }
            | ApiError::Detailed { code, .. }
            | ApiError::CodedServer { code, .. }
            | ApiError::CodedPlan { code, .. } => code,
            ApiError::Server(_) => "SERVER_ERROR",
        }
    }

    /// The message shown to the client.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::AuthRequired(why) => format!("Authentication required: {why}"),
            ApiError::Forbidden(why) => format!("Forbidden: {why}"),
            ApiError::NotFound => "No such route".to_string(),
            ApiError::MethodNotAllowed { allow } => {
                format!("Method not allowed; allowed: {}", allow.join(", "))
            }
            ApiError::PayloadTooLarge { limit } => {
                format!("Request body is larger than the limit of {limit} bytes")
            }
            ApiError::InvalidRequest(why) => why.clone(),
            ApiError::PaymentPending { invoice_url: Some(_), .. } => {
                "A subscription is waiting for payment: pay its invoice (invoiceUrl) or cancel it first".into()
            }
            ApiError::PaymentPending { .. } => {
                "A subscription is waiting for payment: complete or cancel it in the billing portal first".into()
            }
            ApiError::Coded { message, .. }
            | ApiError::CodedPlan { message, .. }
            | ApiError::Detailed { message, .. } => message.clone(),
            ApiError::CodedServer { public, .. } => public.to_string(),
            ApiError::Server(_) => "Internal error; quote the request id when reporting it".to_string(),
        }
    }

    /// The cause worth logging: server-side detail for 5xx, nothing for client errors.
    pub fn log_cause(&self) -> Option<&str> {
        match self {
            ApiError::Server(cause) | ApiError::CodedServer { cause, .. } => Some(cause),
            _ => None,
        }
    }

    /// `{"ok":false,"code","message"}`, plus `plan` for `CodedPlan` and
    /// `subscriptionStatus` (and `invoiceUrl` when there is one) for `PaymentPending`.
    pub fn body_json(&self) -> String {
        let mut body = crate::obj! {"ok": false, "code": self.code(), "message": self.public_message()};
        if let Some(obj) = body.as_object_mut() {
            match self {
                ApiError::CodedPlan { plan, .. } => {
                    obj.insert("plan".into(), plan.as_str().into());
                }
                ApiError::PaymentPending { subscription_status, invoice_url } => {
                    obj.insert("subscriptionStatus".into(), subscription_status.as_str().into());
                    if let Some(url) = invoice_url {
                        obj.insert("invoiceUrl".into(), url.as_str().into());
                    }
                }
                // Extra fields never replace `ok`, `code` or `message`.
                ApiError::Detailed { fields: serde_json::Value::Object(extra), .. } => {
                    for (k, v) in extra {
                        obj.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
                _ => {}
            }
        }
        crate::util::json_text(&body)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.status())?;
        if let Some(cause) = self.log_cause() {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(e: &ApiError) -> serde_json::Value {
        serde_json::from_str(&e.body_json()).unwrap()
    }

    #[test]
    fn a_detailed_error_adds_its_fields_but_never_replaces_ok_code_or_message() {
        let e = ApiError::Detailed {
            status: 402,
            code: "QUOTA_EXCEEDED",
            message: "Monthly limit reached".into(),
            fields: serde_json::json!({"limit": 10, "used": 10, "ok": true, "code": "X"}),
        };
        let v = parse(&e);
        assert_eq!((e.status(), v["code"].as_str(), v["ok"].as_bool()), (402, Some("QUOTA_EXCEEDED"), Some(false)));
        assert_eq!((v["limit"].as_i64(), v["used"].as_i64()), (Some(10), Some(10)));
        assert_eq!(v["message"], "Monthly limit reached");
    }

    #[test]
    fn each_error_maps_to_its_documented_code_and_status() {
        let cases = [
            (ApiError::AuthRequired("missing bearer token"), "AUTH_REQUIRED", 401),
            (ApiError::Forbidden("admin only"), "FORBIDDEN", 403),
            (ApiError::NotFound, "NOT_FOUND", 404),
            (ApiError::MethodNotAllowed { allow: &["GET"] }, "METHOD_NOT_ALLOWED", 405),
            (ApiError::PayloadTooLarge { limit: 10 }, "PAYLOAD_TOO_LARGE", 413),
            (ApiError::InvalidRequest("bad".into()), "INVALID_REQUEST", 400),
            (ApiError::server("boom"), "SERVER_ERROR", 500),
            (ApiError::coded(409, "ALREADY_ON_PLAN", "already on pro"), "ALREADY_ON_PLAN", 409),
            (
                ApiError::CodedServer { status: 500, code: "WEBHOOK_NOT_CONFIGURED", public: "x", cause: "y".into() },
                "WEBHOOK_NOT_CONFIGURED",
                500,
            ),
        ];
        for (e, code, status) in cases {
            assert_eq!(e.code(), code);
            assert_eq!(e.status(), status);
            let body = parse(&e);
            assert_eq!(body["ok"], false);
            assert_eq!(body["code"], code);
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn a_server_error_never_shows_its_cause_to_the_client() {
        let e = ApiError::server("D1_ERROR: no such table: users: SQLITE_ERROR at stack line 3");
        let body = e.body_json();
        assert!(!body.contains("D1_ERROR"));
        assert!(!body.contains("SQLITE"));
        assert_eq!(e.log_cause(), Some("D1_ERROR: no such table: users: SQLITE_ERROR at stack line 3"));
    }

    #[test]
    fn a_coded_server_error_shows_its_fixed_message_and_logs_its_cause() {
        let e = ApiError::CodedServer {
            status: 500,
            code: "WEBHOOK_FAILED",
            public: "Webhook processing failed; it will be retried",
            cause: "stripe 500 on GET /v1/subscriptions/sub_1".into(),
        };
        assert!(!e.body_json().contains("sub_1"));
        assert_eq!(e.log_cause(), Some("stripe 500 on GET /v1/subscriptions/sub_1"));
    }

    #[test]
    fn already_subscribed_says_which_plan() {
        let e = ApiError::CodedPlan {
            status: 409,
            code: "ALREADY_SUBSCRIBED",
            message: "You already have a subscription".into(),
            plan: "pro".into(),
        };
        assert_eq!(parse(&e)["plan"], "pro");
        assert_eq!(e.status(), 409);
        assert!(parse(&ApiError::NotFound).get("plan").is_none());
    }

    #[test]
    fn payment_pending_says_where_to_pay() {
        let e = ApiError::PaymentPending {
            subscription_status: "incomplete".into(),
            invoice_url: Some("https://invoice.stripe.test/i/1".into()),
        };
        let body = parse(&e);
        assert_eq!((e.status(), body["code"].as_str()), (409, Some("PAYMENT_PENDING")));
        assert_eq!(body["invoiceUrl"], "https://invoice.stripe.test/i/1");
        assert_eq!(body["subscriptionStatus"], "incomplete");
        let paused = ApiError::PaymentPending { subscription_status: "paused".into(), invoice_url: None };
        assert!(parse(&paused).get("invoiceUrl").is_none());
        assert!(parse(&paused)["message"].as_str().unwrap().contains("billing portal"));
    }

    /// The functions that take a code among their arguments.
    const CODE_TAKERS: [&str; 4] = ["coded", "stripe_failure", "call", "subscriptions"];

    /// The name of the call whose argument list `before` ends inside.
    fn enclosing_call(before: &str) -> &str {
        let mut depth = 0;
        for (i, c) in before.char_indices().rev() {
            match c {
                ')' => depth += 1,
                '(' if depth == 0 => {
                    let name = before[..i].rsplit(|c: char| !(c.is_alphanumeric() || c == '_')).next();
                    return name.unwrap_or_default();
                }
                '(' => depth -= 1,
                _ => {}
            }
        }
        ""
    }

    /// Every code the source can answer with: a literal given as `code: "…"`, `"code": "…"`,
    /// in `ApiError::code`, as an argument of a [`CODE_TAKERS`] call, or through a `const`
    /// given as `code: NAME`.
    fn codes_in_source() -> std::collections::BTreeSet<String> {
        fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    files(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let is_code = |s: &str| {
            s.len() >= 3
                && s.starts_with(|c: char| c.is_ascii_uppercase())
                && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        };
        let mut paths = Vec::new();
        files(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut paths);
        let mut codes = std::collections::BTreeSet::new();
        for path in paths {
            let raw = std::fs::read_to_string(&path).unwrap();
            let text = raw.split_whitespace().collect::<Vec<_>>().join(" ");
            let in_error_rs = path.ends_with("error.rs");
            let mut rest = text.as_str();
            while let Some(open) = rest.find('"') {
                let after = &rest[open + 1..];
                let Some(close) = after.find('"') else { break };
                let (literal, before) = (&after[..close], &text[..text.len() - rest.len() + open]);
                if is_code(literal)
                    && (before.ends_with("code: ")
                        || before.ends_with("\"code\": ")
                        || (in_error_rs && before.ends_with("=> "))
                        || CODE_TAKERS.contains(&enclosing_call(before)))
                {
                    codes.insert(literal.to_string());
                }
                if let Some(name) = before.strip_suffix(": &str = ").and_then(|b| b.rsplit_once("const ")) {
                    if is_code(literal) && text.contains(&format!("code: {}", name.1)) {
                        codes.insert(literal.to_string());
                    }
                }
                rest = &after[close + 1..];
            }
        }
        codes
    }

    #[test]
    fn every_code_plangate_can_answer_is_in_a_readme_error_table() {
        let codes = codes_in_source();
        for known in ["AUTH_REQUIRED", "UPDATE_FAILED", "WEBHOOK_RETRY_LATER", "PAYMENT_PENDING", "CUSTOMER_MISSING"] {
            assert!(codes.contains(known), "the scan misses {known}: {codes:?}");
        }
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        // The first cell of the rows of the `| code | status | when |` tables.
        let mut documented = std::collections::BTreeSet::new();
        let mut in_table = false;
        for line in readme.lines() {
            if line.starts_with("| code | status |") {
                in_table = true;
            } else if !line.starts_with('|') {
                in_table = false;
            } else if in_table {
                let cell = line.split('|').nth(1).unwrap_or_default();
                documented.extend(cell.split('`').skip(1).step_by(2).map(str::to_string));
            }
        }
        let missing: Vec<_> = codes.difference(&documented).collect();
        assert!(missing.is_empty(), "codes not in the README's error tables: {missing:?}");
    }

    #[test]
    fn client_errors_have_nothing_to_log_and_say_what_is_wrong() {
        assert_eq!(ApiError::NotFound.log_cause(), None);
        assert_eq!(
            parse(&ApiError::MethodNotAllowed { allow: &["GET", "OPTIONS"] })["message"],
            "Method not allowed; allowed: GET, OPTIONS"
        );
        assert!(parse(&ApiError::PayloadTooLarge { limit: 1048576 })["message"].as_str().unwrap().contains("1048576"));
    }
}
