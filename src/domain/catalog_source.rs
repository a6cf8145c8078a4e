//! Parses and validates the human-edited plan catalog (`plans.toml`).
//!
//! This module is compiled twice: by `build.rs`, which turns the catalog into Rust
//! data and fails the build with the message of any [`CatalogError`], and by the
//! library's native unit tests. It is not part of the Wasm bundle.

use std::collections::BTreeSet;
use std::fmt;

/// One tier as written in the catalog, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierSpec {
    pub id: String,
    pub name: String,
    pub trial_days: u32,
    /// Feature id and its monthly limit (`None`: unlimited), in catalog order.
    pub features: Vec<(String, Option<u64>)>,
    /// Credits granted at the start of each paid billing period.
    pub credits_per_period: u64,
}

/// A credit pack sold one-off (its Stripe price comes from `STRIPE_PRICE_PACK_<ID>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSpec {
    pub id: String,
    pub name: String,
    pub credits: u64,
}

/// The whole validated catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogSpec {
    pub tiers: Vec<TierSpec>,
    pub packs: Vec<PackSpec>,
    /// Features paid in credits: feature id → credits per use.
    pub credit_costs: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogError(pub String);

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid plan catalog: {}", self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, CatalogError> {
    Err(CatalogError(msg.into()))
}

/// Identifiers are lowercase ASCII: they appear in URLs, KV keys and env var names.
fn valid_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 32
}

/// The API reports a trialing user's plan as `trial`, so no tier may be called that.
const RESERVED_TIER_IDS: &[&str] = &["trial"];
const MAX_TRIAL_DAYS: i64 = 365;
/// Credits in one grant, pack or use at most: far below 2^53 (D1 numbers are f64).
const MAX_CREDITS: i64 = 1_000_000_000;

fn credits_value(what: &str, v: Option<&toml::Value>) -> Result<u64, CatalogError> {
    match v {
        None => Ok(0),
        Some(toml::Value::Integer(n)) if (0..=MAX_CREDITS).contains(n) => Ok(*n as u64),
        Some(v) => err(format!("{what} must be a whole number of credits from 0 to {MAX_CREDITS}, not {v}")),
    }
}

pub fn parse_catalog(text: &str) -> Result<CatalogSpec, CatalogError> {
    let doc: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return err(format!("not valid TOML: {e}")),
    };
    for key in doc.keys() {
        if !["order", "tiers", "packs", "credit_costs"].contains(&key.as_str()) {
            return err(format!(
                "unknown top-level key `{key}` (expected `order`, `tiers`, `packs` and `credit_costs`)"
            ));
        }
    }
    let order = match doc.get("order") {
        Some(toml::Value::Array(a)) => a,
        Some(_) => return err("`order` must be an array of tier ids"),
        None => return err("missing `order`: the list of tiers, lowest first"),
    };
    if order.is_empty() {
        return err("`order` is empty: at least the default tier is needed");
    }
    let empty = toml::Table::new();
    let tiers = match doc.get("tiers") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => return err("`tiers` must be a table of [tiers.<id>] sections"),
        None => &empty,
    };

    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(order.len());
    for (rank, entry) in order.iter().enumerate() {
        let id = match entry.as_str() {
            Some(s) => s,
            None => return err(format!("`order[{rank}]` is not a string")),
        };
        if !valid_ident(id) {
            return err(format!("tier id `{id}` must be lowercase letters, digits or `_`, starting with a letter"));
        }
        if RESERVED_TIER_IDS.contains(&id) {
            return err(format!("tier id `{id}` is reserved"));
        }
        if !seen.insert(id.to_string()) {
            return err(format!("duplicate tier `{id}` in `order`"));
        }
        let table = match tiers.get(id) {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return err(format!("`tiers.{id}` must be a table")),
            None => return err(format!("unknown tier `{id}`: listed in `order` but no [tiers.{id}] section")),
        };
        out.push(parse_tier(id, table, rank == 0)?);
    }
    for id in tiers.keys() {
        if !seen.contains(id) {
            return err(format!("unknown tier `{id}`: [tiers.{id}] is not listed in `order`"));
        }
    }
    let packs = parse_packs(doc.get("packs"))?;
    let credit_costs = parse_credit_costs(doc.get("credit_costs"), &out)?;
    Ok(CatalogSpec { tiers: out, packs, credit_costs })
}

fn parse_packs(v: Option<&toml::Value>) -> Result<Vec<PackSpec>, CatalogError> {
    let table = match v {
        None => return Ok(Vec::new()),
        Some(toml::Value::Table(t)) => t,
        Some(_) => return err("`packs` must be a table of [packs.<id>] sections"),
    };
    let mut packs = Vec::new();
    for (id, pack) in table {
        if !valid_ident(id) {
            return err(format!("pack id `{id}` must be lowercase letters, digits or `_`, starting with a letter"));
        }
        let t = match pack {
            toml::Value::Table(t) => t,
            _ => return err(format!("`packs.{id}` must be a table")),
        };
        for key in t.keys() {
            if key != "name" && key != "credits" {
                return err(format!("pack `{id}`: unknown key `{key}` (expected `name` and `credits`)"));
            }
        }
        let name = match t.get("name") {
            Some(toml::Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => return err(format!("pack `{id}`: `name` must be a non-empty string")),
        };
        if t.get("credits").is_none() {
            return err(format!("pack `{id}`: missing `credits`"));
        }
        let credits = credits_value(&format!("pack `{id}`: `credits`"), t.get("credits"))?;
        if credits == 0 {
            return err(format!("pack `{id}`: `credits` must be at least 1"));
        }
        packs.push(PackSpec { id: id.clone(), name, credits });
    }
    Ok(packs)
}

fn parse_credit_costs(v: Option<&toml::Value>, tiers: &[TierSpec]) -> Result<Vec<(String, u64)>, CatalogError> {
    let table = match v {
        None => return Ok(Vec::new()),
        Some(toml::Value::Table(t)) => t,
        Some(_) => return err("`credit_costs` must be a table of feature = credits per use"),
    };
    let mut costs = Vec::new();
    for (feature, cost) in table {
        let what = format!("credit cost of `{feature}`");
        let n = credits_value(&what, Some(cost))?;
        if n == 0 {
            return err(format!("{what} must be at least 1 (leave a free feature out of `credit_costs`)"));
        }
        let listed: Vec<&TierSpec> = tiers.iter().filter(|t| t.features.iter().any(|(f, _)| f == feature)).collect();
        if listed.is_empty() {
            return err(format!("{what}: `{feature}` is not a feature of any tier"));
        }
        if let Some(t) = listed.iter().find(|t| t.features.iter().any(|(f, l)| f == feature && l.is_some())) {
            return err(format!(
                "`{feature}` is paid in credits and cannot also have a monthly limit (tier `{}`)",
                t.id
            ));
        }
        costs.push((feature.clone(), n));
    }
    Ok(costs)
}

fn parse_tier(id: &str, t: &toml::Table, is_default: bool) -> Result<TierSpec, CatalogError> {
    for key in t.keys() {
        if !["name", "trial_days", "features", "limits", "credits_per_period"].contains(&key.as_str()) {
            return err(format!("tier `{id}`: unknown key `{key}`"));
        }
    }
    let name = match t.get("name") {
        Some(toml::Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => return err(format!("tier `{id}`: `name` must be a non-empty string")),
        None => return err(format!("tier `{id}`: missing `name`")),
    };
    let trial_days = match t.get("trial_days") {
        None => 0,
        Some(toml::Value::Integer(n)) if (0..=MAX_TRIAL_DAYS).contains(n) => *n as u32,
        Some(v) => {
            return err(format!("tier `{id}`: `trial_days` must be a whole number from 0 to {MAX_TRIAL_DAYS}, not {v}"))
        }
    };
    if is_default && trial_days != 0 {
        return err(format!("tier `{id}` is the default (first) tier and cannot have a trial"));
    }
    let mut features: Vec<(String, Option<u64>)> = Vec::new();
    match t.get("features") {
        None => {}
        Some(toml::Value::Array(a)) => {
            for f in a {
                let f = match f.as_str() {
                    Some(s) if valid_ident(s) => s,
                    _ => return err(format!("tier `{id}`: feature {f} is not a valid feature id")),
                };
                if features.iter().any(|(x, _)| x == f) {
                    return err(format!("tier `{id}`: duplicate feature `{f}`"));
                }
                features.push((f.to_string(), None));
            }
        }
        Some(_) => return err(format!("tier `{id}`: `features` must be an array of feature ids")),
    }
    match t.get("limits") {
        None => {}
        Some(toml::Value::Table(limits)) => {
            for (feature, value) in limits {
                let n = match value {
                    toml::Value::Integer(n) if *n >= 0 => *n as u64,
                    other => {
                        return err(format!(
                            "tier `{id}`: limit `{feature}` is not a number (a whole number of uses per month, 0 or more): {other}"
                        ))
                    }
                };
                match features.iter_mut().find(|(f, _)| f == feature) {
                    Some(slot) => slot.1 = Some(n),
                    None => return err(format!("tier `{id}`: limit for `{feature}`, which is not in its `features`")),
                }
            }
        }
        Some(_) => return err(format!("tier `{id}`: `limits` must be a table of feature = number")),
    }
    let credits_per_period = credits_value(&format!("tier `{id}`: `credits_per_period`"), t.get("credits_per_period"))?;
    if is_default && credits_per_period != 0 {
        return err(format!("tier `{id}` is the default (first) tier: it has no billing period to grant credits in"));
    }
    Ok(TierSpec { id: id.to_string(), name, trial_days, features, credits_per_period })
}

/// Renders the validated catalog as Rust source for `include!` in `domain::plans`.
pub fn to_rust(catalog: &CatalogSpec) -> String {
    let cost = |f: &str| catalog.credit_costs.iter().find(|(c, _)| c == f).map(|(_, n)| *n);
    let opt = |v: Option<u64>| match v {
        Some(n) => format!("Some({n})"),
        None => "None".to_string(),
    };
    let mut s = String::from("// @generated by build.rs from plans.toml; edit plans.toml instead.\n");
    s.push_str("pub static TIERS: &[TierDef] = &[\n");
    for t in &catalog.tiers {
        s.push_str(&format!(
            "    TierDef {{ id: {:?}, name: {:?}, trial_days: {}, credits_per_period: {}, features: &[",
            t.id, t.name, t.trial_days, t.credits_per_period
        ));
        for (f, limit) in &t.features {
            s.push_str(&format!(
                "FeatureDef {{ id: {f:?}, monthly_limit: {}, credit_cost: {} }}, ",
                opt(*limit),
                opt(cost(f))
            ));
        }
        s.push_str("] },\n");
    }
    s.push_str("];\n");
    s.push_str("pub static PACKS: &[PackDef] = &[\n");
    for p in &catalog.packs {
        s.push_str(&format!("    PackDef {{ id: {:?}, name: {:?}, credits: {} }},\n", p.id, p.name, p.credits));
    }
    s.push_str("];\n");
    s
}
