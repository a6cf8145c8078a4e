//! The catalog compiler's validation, exercised the way build.rs runs it.

use super::catalog_source::{parse_catalog, to_rust};

const VALID: &str = r#"
order = ["free", "essential", "pro"]
[tiers.free]
name = "Free"
features = ["a"]
limits = { a = 3 }
[tiers.essential]
name = "Essential"
trial_days = 3
features = ["a", "b"]
[tiers.pro]
name = "Pro"
features = ["a", "b", "c"]
limits = { c = 0 }
"#;

fn error_of(text: &str) -> String {
    parse_catalog(text).unwrap_err().to_string()
}

#[test]
fn a_valid_catalog_keeps_order_limits_and_trials() {
    let tiers = parse_catalog(VALID).unwrap().tiers;
    let ids: Vec<_> = tiers.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["free", "essential", "pro"]);
    assert_eq!(tiers[0].features, vec![("a".to_string(), Some(3))]);
    assert_eq!(tiers[1].trial_days, 3);
    assert_eq!(tiers[1].features[1], ("b".to_string(), None));
    assert_eq!(tiers[2].features[2], ("c".to_string(), Some(0)));
    let src = to_rust(&parse_catalog(VALID).unwrap());
    assert!(src.contains(r#"TierDef { id: "essential", name: "Essential", trial_days: 3, credits_per_period: 0"#));
    assert!(src.contains(r#"FeatureDef { id: "c", monthly_limit: Some(0), credit_cost: None }"#));
}

#[test]
fn the_repository_catalog_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/plans.toml")).unwrap();
    assert_eq!(parse_catalog(&text).unwrap().tiers.len(), super::plans::Catalog::builtin().tiers().count());
}

#[test]
fn an_unknown_tier_fails_with_its_name() {
    let e = error_of(
        &VALID.replace(r#"order = ["free", "essential", "pro"]"#, r#"order = ["free", "essential", "pro", "gold"]"#),
    );
    assert!(e.contains("unknown tier `gold`"), "{e}");
    let e = error_of(&VALID.replace(r#"order = ["free", "essential", "pro"]"#, r#"order = ["free", "essential"]"#));
    assert!(e.contains("unknown tier `pro`"), "{e}");
}

#[test]
fn a_duplicate_tier_or_feature_fails() {
    let e = error_of(
        &VALID.replace(r#"order = ["free", "essential", "pro"]"#, r#"order = ["free", "pro", "essential", "pro"]"#),
    );
    assert!(e.contains("duplicate tier `pro`"), "{e}");
    let e = error_of(&VALID.replace(r#"features = ["a", "b", "c"]"#, r#"features = ["a", "b", "a"]"#));
    assert!(e.contains("duplicate feature `a`"), "{e}");
    // TOML itself refuses a second [tiers.pro] table.
    let e = error_of(&format!("{VALID}\n[tiers.pro]\nname = \"Again\"\n"));
    assert!(e.contains("not valid TOML"), "{e}");
}

#[test]
fn a_limit_that_is_not_a_number_fails() {
    for bad in [r#"{ a = "lots" }"#, "{ a = -1 }", "{ a = 2.5 }", "{ a = true }"] {
        let e = error_of(&VALID.replace("{ a = 3 }", bad));
        assert!(e.contains("limit `a` is not a number"), "{bad}: {e}");
    }
}

#[test]
fn other_mistakes_fail_with_a_clear_message() {
    let cases = [
        (VALID.replace("limits = { a = 3 }", "limits = { z = 3 }"), "not in its `features`"),
        (VALID.replace("trial_days = 3", "trial_days = \"3\""), "trial_days"),
        (
            VALID.replace("[tiers.free]\nname = \"Free\"", "[tiers.free]\nname = \"Free\"\ntrial_days = 7"),
            "cannot have a trial",
        ),
        (VALID.replace("name = \"Pro\"", "nam = \"Pro\""), "unknown key `nam`"),
        (VALID.replace(r#""free", "essential", "pro""#, r#""free", "trial", "pro""#), "reserved"),
        (VALID.replace(r#""free", "essential", "pro""#, r#""free", "Essential", "pro""#), "lowercase"),
        ("order = []".to_string(), "empty"),
        ("tiers = 3".to_string(), "missing `order`"),
        (format!("extra = 1\n{VALID}"), "unknown top-level key `extra`"),
        ("order = [".to_string(), "not valid TOML"),
    ];
    for (text, want) in cases {
        let e = error_of(&text);
        assert!(e.contains(want), "expected {want:?} in {e:?}");
        assert!(e.starts_with("invalid plan catalog: "));
    }
}

const WITH_CREDITS: &str = r#"
[tiers.pro]
name = "Pro"
credits_per_period = 20
features = ["a", "b", "c", "scan"]
limits = { c = 0 }
[packs.small]
name = "Small pack"
credits = 100
[credit_costs]
scan = 10
"#;

fn with_credits() -> String {
    VALID.replace(
        "[tiers.pro]\nname = \"Pro\"\nfeatures = [\"a\", \"b\", \"c\"]\nlimits = { c = 0 }",
        WITH_CREDITS.trim(),
    )
}

#[test]
fn credits_per_period_packs_and_credit_costs_are_compiled() {
    let c = parse_catalog(&with_credits()).unwrap();
    assert_eq!(c.tiers[2].credits_per_period, 20);
    assert_eq!(c.tiers[0].credits_per_period, 0, "absent means 0");
    assert_eq!(c.packs.len(), 1);
    assert_eq!((c.packs[0].id.as_str(), c.packs[0].credits), ("small", 100));
    assert_eq!(c.credit_costs, vec![("scan".to_string(), 10)]);
    let src = to_rust(&c);
    assert!(src.contains(r#"FeatureDef { id: "scan", monthly_limit: None, credit_cost: Some(10) }"#), "{src}");
    assert!(src.contains(r#"PackDef { id: "small", name: "Small pack", credits: 100 }"#), "{src}");
}

#[test]
fn credit_mistakes_fail_with_a_clear_message() {
    let base = with_credits();
    let cases = [
        (base.replace("credits = 100", "credits = 0"), "at least 1"),
        (base.replace("credits = 100", "credits = -5"), "whole number of credits"),
        (base.replace("credits = 100", "credits = \"many\""), "whole number of credits"),
        (base.replace("name = \"Small pack\"\n", ""), "pack `small`: `name`"),
        (base.replace("credits = 100", "credit = 100"), "unknown key `credit`"),
        (base.replace("[packs.small]", "[packs.Small]"), "pack id `Small`"),
        (base.replace("scan = 10", "scan = 0"), "at least 1"),
        (base.replace("scan = 10", "nowhere = 10"), "not a feature of any tier"),
        (base.replace("credits_per_period = 20", "credits_per_period = 2.5"), "credits_per_period"),
        (
            base.replace("[tiers.free]\nname = \"Free\"", "[tiers.free]\nname = \"Free\"\ncredits_per_period = 5"),
            "default (first) tier",
        ),
        (
            base.replace(
                "features = [\"a\"]\nlimits = { a = 3 }",
                "features = [\"a\", \"scan\"]\nlimits = { a = 3, scan = 1 }",
            ),
            "cannot also have a monthly limit",
        ),
        (
            format!("credit_costs = 3\n{}", base.replace("[credit_costs]\nscan = 10", "")),
            "`credit_costs` must be a table",
        ),
    ];
    for (text, want) in cases {
        assert_ne!(text, base, "the case {want:?} changed nothing");
        let e = error_of(&text);
        assert!(e.contains(want), "expected {want:?} in {e:?}");
    }
}
