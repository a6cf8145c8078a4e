//! Stripe by hand: signatures (pure), the REST client, tolerant event parsing.

pub mod client;
pub mod events;
pub mod signature;
