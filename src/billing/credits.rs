//! Credits: what Stripe's payments grant (pack purchases, a tier's credits per paid
//! billing period), what refunds take back, and what users and admins spend or adjust.
//!
//! Every ledger row is keyed on the business object it comes from, never on the event:
//! a pack purchase on its payment intent (`purchase:<pi>`; the Checkout Session when a
//! free purchase has none), a period grant on (subscription, period start)
//! (`period:<sub>:<start>`), a refund on the payment's cumulative refunded amount
//! (`refund:<pi>:<refunded>`), a spend on the user's idempotency key. So
//! `checkout.session.completed`, `payment_intent.succeeded` and `invoice.paid`, in any
//! order and however often, write each row once. Rows that change a balance also make
//! the user's KV copies due (the entitlements cache shows the balance).

use serde_json::Value;

use super::Billing;
use crate::domain::account::UserRecord;
use crate::domain::plans::{Catalog, PackDef, TierDef};
use crate::domain::subscription::PriceMap;
use crate::error::ApiError;
use crate::store::credits::{self, Credit, Debit, Debited};
use crate::store::db::{Param, Stmt};
use crate::store::outbox;
use crate::stripe::events::PaidInvoice;

/// Spends and adjustments at most this many credits at once.
pub const MAX_AMOUNT: i64 = 1_000_000;

/// The answer to a spend (or a consume paid in credits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spent {
    pub transaction_id: String,
    pub spent: i64,
    pub balance: i64,
    pub replayed: bool,
}

fn key_reused() -> ApiError {
    ApiError::coded(
        409,
        "IDEMPOTENCY_KEY_REUSED",
        "This idempotencyKey was already used for a different request; use a new key",
    )
}

pub fn insufficient(balance: i64, required: i64) -> ApiError {
    ApiError::Detailed {
        status: 402,
        code: "INSUFFICIENT_CREDITS",
        message: format!("Not enough credits: {required} needed, {balance} available"),
        fields: crate::obj! {"balance": balance, "required": required},
    }
}

/// What a paid invoice grants: the tier's credits for the period it opens, and that
/// period's start. Only an invoice that opens a period counts (the first one, a
/// renewal, or an update that restarted the cycle, e.g. a trial ended by an upgrade);
/// a proration invoice of an upgrade mid-period starts none. Nothing for a free
/// invoice (a trial; a period paid by a coupon or the balance still counts) or a tier
/// without credits.
pub fn period_grant(
    invoice: &PaidInvoice,
    subscription_period_start: Option<i64>,
    subscription_plan: &str,
    catalog: &Catalog,
    prices: &PriceMap,
) -> Option<(&'static TierDef, i64)> {
    // A first invoice or a renewal opens a period; so does an update that restarts the
    // billing cycle (a trial ended early by an upgrade): its line starts the
    // subscription's current period. A proration mid-period starts nothing.
    let opens_period = match invoice.billing_reason.as_deref() {
        Some("subscription_create" | "subscription_cycle") => true,
        _ => invoice.period_start.is_some() && invoice.period_start == subscription_period_start,
    };
    if !invoice.paid || invoice.charged <= 0 || !opens_period {
        return None;
    }
    let tier = invoice.price.as_deref().and_then(|p| prices.tier_of(p)).or_else(|| catalog.parse(subscription_plan))?;
    let start = invoice.period_start.or(subscription_period_start)?;
    let def = catalog.def(tier);
    (def.credits_per_period > 0).then_some((def, start))
}

impl Billing<'_> {
    /// A pack bought and paid: its credits once per payment, the payment row told which
    /// pack it was (for refunds), and refunds that arrived first settled at once.
    pub(super) fn pack_grant_stmts(
        &self,
        user_id: &str,
        payment_id: &str,
        pack: &PackDef,
        event_id: &str,
    ) -> Result<Vec<Stmt>, ApiError> {
        let credits = pack.credits as i64;
        Ok(vec![
            Stmt {
                sql: "UPDATE stripe_payments SET pack = ?2, credits = ?3 WHERE id = ?1",
                params: vec![payment_id.into(), pack.id.into(), Param::Int(credits)],
            },
            credits::credit_stmt(
                &Credit {
                    id: credits::new_id()?,
                    user_id,
                    delta: credits,
                    reason: "purchase",
                    source_key: format!("purchase:{payment_id}"),
                    event_id: Some(event_id),
                    metadata: crate::util::json_text(&crate::obj! {"pack": pack.id, "payment": payment_id}),
                },
                self.now,
            ),
            credits::settle_refunds_stmt(&credits::new_id()?, payment_id, event_id, self.now),
            outbox::due_stmt(user_id, self.now),
        ])
    }

    /// The refunds of a payment settled against what its purchase granted.
    pub(super) fn refund_stmts(
        &self,
        user_id: Option<&str>,
        payment_id: &str,
        event_id: &str,
    ) -> Result<Vec<Stmt>, ApiError> {
        let mut stmts = vec![credits::settle_refunds_stmt(&credits::new_id()?, payment_id, event_id, self.now)];
        stmts.extend(user_id.map(|u| outbox::due_stmt(u, self.now)));
        Ok(stmts)
    }

    /// A tier's credits for the paid billing period an invoice starts: once per
    /// (subscription, period start). Nothing for a free invoice (a trial), a proration
    /// mid-period or a tier without credits.
    pub(super) fn period_grant_stmts(
        &self,
        user_id: &str,
        subscription_id: &str,
        invoice: &PaidInvoice,
        subscription_period_start: Option<i64>,
        subscription_plan: &str,
        event_id: &str,
    ) -> Result<Vec<Stmt>, ApiError> {
        let Some((def, start)) =
            period_grant(invoice, subscription_period_start, subscription_plan, &self.catalog, &self.cfg.prices)
        else {
            return Ok(Vec::new());
        };
        Ok(vec![
            credits::credit_stmt(
                &Credit {
                    id: credits::new_id()?,
                    user_id,
                    delta: def.credits_per_period as i64,
                    reason: "grant",
                    source_key: format!("period:{subscription_id}:{start}"),
                    event_id: Some(event_id),
                    metadata: crate::util::json_text(&crate::obj! {
                        "tier": def.id,
                        "subscription": subscription_id,
                        "periodStart": start,
                        "invoice": invoice.id.as_str(),
                    }),
                },
                self.now,
            ),
            outbox::due_stmt(user_id, self.now),
        ])
    }

    /// Spends `amount` credits for `user` once per `source_key`, never below zero.
    /// `same` tells whether an earlier row of the key was the same request.
    pub async fn debit(
        &self,
        user: &UserRecord,
        amount: i64,
        reason: &'static str,
        source_key: String,
        metadata: Value,
        same: &dyn Fn(&Option<Value>) -> bool,
    ) -> Result<Spent, ApiError> {
        let debit = Debit {
            id: credits::new_id()?,
            user_id: &user.id,
            amount,
            reason,
            source_key,
            metadata: crate::util::json_text(&metadata),
        };
        match credits::debit(self.db, &debit, self.now).await? {
            Debited::Done { id, balance } => Ok(Spent { transaction_id: id, spent: amount, balance, replayed: false }),
            Debited::Replayed { id, user_id, delta, metadata, balance } => {
                let stored = metadata.and_then(|m| serde_json::from_str::<Value>(&m).ok());
                if user_id != user.id || -delta != amount || !same(&stored) {
                    return Err(key_reused());
                }
                Ok(Spent { transaction_id: id, spent: amount, balance, replayed: true })
            }
            Debited::Insufficient { balance } => Err(insufficient(balance, amount)),
        }
    }

    /// `POST /api/credits/spend`: the user's own spend, keyed on their idempotency key.
    pub async fn spend(&self, user: &UserRecord, amount: i64, note: &str, key: &str) -> Result<Spent, ApiError> {
        let metadata = crate::obj! {"note": note, "idempotencyKey": key};
        let source = format!("spend:{}:{key}", user.id);
        self.debit(user, amount, "spend", source, metadata, &|m| {
            m.as_ref().and_then(|m| m.get("note")).and_then(Value::as_str) == Some(note)
        })
        .await
    }

    /// `POST /api/admin/credits/adjust`: an audited correction; a debit never takes the
    /// balance below zero.
    pub async fn adjust(&self, user: &UserRecord, delta: i64, note: &str) -> Result<Spent, ApiError> {
        let id = credits::new_id()?;
        let metadata = crate::obj! {"note": note, "by": "admin", "requestId": self.request_id};
        if delta < 0 {
            let source = format!("adjust:{id}");
            let spent = self.debit(user, -delta, "adjustment", source, metadata, &|_| false).await?;
            return Ok(Spent { spent: delta, ..spent });
        }
        let credit = Credit {
            id: id.clone(),
            user_id: &user.id,
            delta,
            reason: "adjustment",
            source_key: format!("adjust:{id}"),
            event_id: None,
            metadata: crate::util::json_text(&metadata),
        };
        let results =
            self.db.batch_rows(&[credits::credit_stmt(&credit, self.now), credits::balance_stmt(&user.id)]).await?;
        let balance = results.get(1).and_then(|r| r.first()).and_then(|r| r.int("balance")).unwrap_or(0);
        Ok(Spent { transaction_id: id, spent: delta, balance, replayed: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::test_support::prices;

    fn invoice(reason: Option<&str>, amount: i64, start: Option<i64>, price: &str) -> PaidInvoice {
        PaidInvoice {
            id: "in_1".into(),
            paid: true,
            amount_paid: amount,
            charged: amount,
            period_start: start,
            price: Some(price.into()),
            billing_reason: reason.map(str::to_string),
        }
    }

    fn grant(i: &PaidInvoice, sub_start: Option<i64>, plan: &str) -> Option<(&'static str, u64, i64)> {
        period_grant(i, sub_start, plan, &Catalog::builtin(), &prices()).map(|(d, s)| (d.id, d.credits_per_period, s))
    }

    #[test]
    fn a_paid_invoice_opening_a_period_grants_its_tiers_credits_once_per_period_start() {
        let first = invoice(Some("subscription_create"), 900, Some(100), "price_pro");
        assert_eq!(grant(&first, Some(100), "pro"), Some(("pro", 20, 100)));
        let renewal = invoice(Some("subscription_cycle"), 2900, Some(200), "price_prem");
        assert_eq!(grant(&renewal, Some(200), "premium"), Some(("premium", 50, 200)));
        // The line's price decides the tier (the subscription may have moved on since).
        assert_eq!(grant(&renewal, Some(300), "essential"), Some(("premium", 50, 200)));
        // Older API versions: no reason, but the line starts the current period.
        let untyped = invoice(None, 900, Some(100), "price_pro");
        assert_eq!(grant(&untyped, Some(100), "pro"), Some(("pro", 20, 100)));
    }

    #[test]
    fn prorations_trials_unpaid_invoices_and_tiers_without_credits_grant_nothing() {
        let proration = invoice(Some("subscription_update"), 450, Some(150), "price_prem");
        assert_eq!(grant(&proration, Some(100), "premium"), None, "an upgrade mid-period opens no period");
        // A trial ended by an upgrade restarts the cycle: the update's invoice opens it.
        assert_eq!(grant(&proration, Some(150), "premium"), Some(("premium", 50, 150)));
        let mut coupon = invoice(Some("subscription_cycle"), 0, Some(100), "price_pro");
        coupon.charged = 900;
        assert_eq!(grant(&coupon, Some(100), "pro"), Some(("pro", 20, 100)), "paid by a coupon: still a paid period");
        assert_eq!(grant(&invoice(None, 450, Some(150), "price_prem"), Some(100), "premium"), None);
        assert_eq!(
            grant(&invoice(Some("subscription_create"), 0, Some(100), "price_pro"), Some(100), "pro"),
            None,
            "trial"
        );
        let mut unpaid = invoice(Some("subscription_cycle"), 900, Some(100), "price_pro");
        unpaid.paid = false;
        assert_eq!(grant(&unpaid, Some(100), "pro"), None);
        assert_eq!(
            grant(&invoice(Some("subscription_cycle"), 900, Some(100), "price_ess"), Some(100), "essential"),
            None
        );
        assert_eq!(grant(&invoice(Some("subscription_cycle"), 900, None, "price_pro"), None, "pro"), None, "no period");
    }
}
