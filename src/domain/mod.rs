//! Pure billing logic: no `worker::` imports, no I/O, no clock. Tested natively.

pub mod account;
#[cfg(test)]
mod catalog_source;
pub mod credit_import;
pub mod csv;
pub mod customer;
pub mod legacy_plan;
pub mod plans;
pub mod purge;
pub mod quota;
pub mod subscription;
pub mod time;
pub mod upgrade;

#[cfg(test)]
mod catalog_tests;
#[cfg(test)]
pub(crate) mod test_support;
