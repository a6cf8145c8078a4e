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
    let tiers = parse_catalog(VALID).unwrap();
    let ids: Vec<_> = tiers.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["free", "essential", "pro"]);
    assert_eq!(tiers[0].features, vec![("a".to_string(), Some(3))]);
    assert_eq!(tiers[1].trial_days, 3);
    assert_eq!(tiers[1].features[1], ("b".to_string(), None));
    assert_eq!(tiers[2].features[2], ("c".to_string(), Some(0)));
    let src = to_rust(&tiers);
    assert!(src.contains(r#"TierDef { id: "essential", name: "Essential", trial_days: 3"#));
    assert!(src.contains(r#"FeatureDef { id: "c", monthly_limit: Some(0) }"#));
}

#[test]
fn the_repository_catalog_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/plans.toml")).unwrap();
    assert_eq!(parse_catalog(&text).unwrap().len(), super::plans::Catalog::builtin().tiers().count());
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
