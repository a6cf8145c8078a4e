//! The `stripe_payments` table: one-off payments recorded for the credit ledger.

use super::db::{Param, Stmt};

pub struct PaymentWrite<'a> {
    pub id: &'a str,
    pub user_id: Option<&'a str>,
    pub customer_id: Option<&'a str>,
    pub checkout_session_id: Option<&'a str>,
    pub amount: Option<i64>,
    pub amount_refunded: Option<i64>,
    pub currency: Option<&'a str>,
    pub status: &'a str,
    pub event_id: &'a str,
    pub event_created: i64,
}

/// Upsert guarded by event time: an older event never overwrites a newer one's status;
/// fields an event does not carry keep their stored value.
pub fn upsert_stmt(p: &PaymentWrite<'_>, now: i64) -> Stmt {
    Stmt {
        sql: "INSERT INTO stripe_payments (id, user_id, customer_id, checkout_session_id, amount, amount_refunded, \
                currency, status, last_event_id, last_event_created, created_at, updated_at) \
              VALUES (?1, ?2, ?3, ?4, ?5, COALESCE(?6, 0), ?7, ?8, ?9, ?10, ?11, ?11) \
              ON CONFLICT(id) DO UPDATE SET \
                user_id = COALESCE(stripe_payments.user_id, excluded.user_id), \
                customer_id = COALESCE(stripe_payments.customer_id, excluded.customer_id), \
                checkout_session_id = COALESCE(stripe_payments.checkout_session_id, excluded.checkout_session_id), \
                amount = COALESCE(excluded.amount, stripe_payments.amount), \
                amount_refunded = MAX(stripe_payments.amount_refunded, COALESCE(?6, 0)), \
                currency = COALESCE(excluded.currency, stripe_payments.currency), \
                status = CASE WHEN excluded.last_event_created >= stripe_payments.last_event_created \
                              THEN excluded.status ELSE stripe_payments.status END, \
                last_event_id = CASE WHEN excluded.last_event_created >= stripe_payments.last_event_created \
                              THEN excluded.last_event_id ELSE stripe_payments.last_event_id END, \
                last_event_created = MAX(stripe_payments.last_event_created, excluded.last_event_created), \
                updated_at = excluded.updated_at",
        params: vec![
            p.id.into(),
            p.user_id.into(),
            p.customer_id.into(),
            p.checkout_session_id.into(),
            p.amount.into(),
            p.amount_refunded.into(),
            p.currency.into(),
            p.status.into(),
            p.event_id.into(),
            Param::Int(p.event_created),
            Param::Int(now),
        ],
    }
}
