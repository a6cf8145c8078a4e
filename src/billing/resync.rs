//! Re-syncing every user from Stripe, a page of users per call, so that one call stays
//! inside a Worker invocation's limits however many users there are.

use super::Billing;
use crate::domain::account::UserRecord;
use crate::error::ApiError;
use crate::store::db::Param;
use crate::{log, obj};

/// Users re-synced per call when the caller does not say.
pub const DEFAULT_PAGE: u32 = 40;
/// At most this many per call. Each user costs a Stripe listing of the customer's
/// subscriptions, two D1 queries (the state batch, the re-read for the KV copy) and up
/// to five KV writes: 100 users stay under the 1,000 subrequests of a paid-plan
/// invocation.
pub const MAX_PAGE: u32 = 100;

/// Users with a Stripe customer, in id order after the cursor (`""` = from the start).
/// The users without a customer have nothing to re-read. (`SELECT *`: the columns are
/// those of `UserRecord`; unknown ones are ignored.)
const PAGE_SQL: &str = "SELECT * FROM users WHERE stripe_customer_id IS NOT NULL AND id > ?1 ORDER BY id LIMIT ?2";

pub struct ResyncPage {
    pub synced: u32,
    /// Users whose re-sync failed (logged): re-sync them one by one.
    pub failed: Vec<String>,
    /// Where the next call starts; `None` once every user has been reached.
    pub cursor: Option<String>,
}

impl Billing<'_> {
    /// Re-reads the subscriptions of up to `limit` users after `after` from Stripe and
    /// stores the truth of each (a user is decided from all of their customer's
    /// subscriptions, never from a partial listing).
    pub async fn resync_page(&self, after: Option<&str>, limit: u32) -> Result<ResyncPage, ApiError> {
        let params = [after.unwrap_or_default().into(), Param::Int(i64::from(limit) + 1)];
        let users: Vec<UserRecord> = self.db.query(PAGE_SQL, &params).await?;
        let more = users.len() > limit as usize;
        let mut page = ResyncPage { synced: 0, failed: Vec::new(), cursor: None };
        for user in users.iter().take(limit as usize) {
            match self.resync_user(user, "admin").await {
                Ok(_) => page.synced += 1,
                Err(e) => {
                    log::error(
                        self.request_id,
                        "resync.user_failed",
                        obj! {"userId": user.id.as_str(), "error": e.to_string()},
                    );
                    page.failed.push(user.id.clone());
                }
            }
            page.cursor = Some(user.id.clone());
        }
        if !more {
            page.cursor = None;
        }
        Ok(page)
    }
}
