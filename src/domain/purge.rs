//! Which accounts a test-account purge may take: an email glob (`*` = any run of
//! characters, everything else literal, ASCII case ignored) that names a domain, or a
//! list of auth ids.

/// Whether Stripe may still bill an account with this subscription `status` (and a
/// subscription id or not), so a purge must leave it alone. Only what surely bills
/// nothing goes: no status and no subscription, an ended one (`canceled`,
/// `incomplete_expired`), or a trial without a subscription (the legacy system's own
/// trial). Anything else may bill: a live or pending status even without an id (legacy
/// records kept it as a bare string), a subscription id without a status, a status this
/// version does not know. `purgeable_users` (migration 0014) is the same rule in SQL.
pub fn may_bill(status: Option<&str>, has_subscription: bool) -> bool {
    match status {
        None | Some("trialing") => has_subscription,
        Some("canceled" | "incomplete_expired") => false,
        Some(_) => true,
    }
}

/// Whether `text` matches `pattern` (`*` matches any run of characters, including none;
/// every other character only itself, ASCII case ignored).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut i, mut j) = (0, 0);
    // The last `*` seen and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i].eq_ignore_ascii_case(&t[j]) {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            // Let that `*` take one more character and try again after it.
            star = Some((si, sj + 1));
            i = si + 1;
            j = sj + 1;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

/// The literal end every address a pattern matches must have (`@domain`, or the part of
/// the domain after its last `*`), so the accounts can be found by suffix; an error for
/// a pattern that could take accounts of any domain: empty, not one `@`, or a domain
/// without a literal `name.tld` after its last `*` (`*`, `*@*`, `*@*.com`, `a@example.*`).
pub fn email_pattern_suffix(pattern: &str) -> Result<String, &'static str> {
    if pattern.is_empty() || pattern.bytes().any(|c| c <= b' ') {
        return Err("match must be a non-empty email pattern without spaces");
    }
    let domain = match pattern.split_once('@') {
        Some((_, d)) if !d.contains('@') => d,
        _ => return Err("match must be an email pattern with one @, such as *@test.example.com"),
    };
    let literal = match domain.rfind('*') {
        Some(k) => &domain[k + 1..],
        None => domain,
    };
    let name = literal.strip_prefix('.').unwrap_or(literal);
    if !name.contains('.') || name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return Err("match must name a domain (such as *@test.example.com): a pattern for every domain is refused");
    }
    let wild = literal.len() != domain.len();
    // `*@*e.com` would take google.com: a `*` in the domain stops at a dot.
    if wild && !literal.starts_with('.') {
        return Err("a * in the domain must be followed by a dot (such as *@*.test.example.com)");
    }
    if wild && registry_suffix(name) {
        return Err("match must name a domain, not a registry suffix such as co.uk that many domains share");
    }
    let suffix = if wild { literal.to_string() } else { format!("@{domain}") };
    Ok(suffix.to_ascii_lowercase())
}

/// `co.uk`, `com.au`, `ac.jp`, …: a country's registry label under its two-letter
/// top-level domain, where every name belongs to someone else.
fn registry_suffix(name: &str) -> bool {
    const LABELS: [&str; 14] =
        ["co", "com", "net", "org", "gov", "edu", "ac", "or", "ne", "go", "gob", "mil", "nic", "ltd"];
    match name.split_once('.') {
        Some((label, tld)) => {
            tld.len() == 2 && !tld.contains('.') && LABELS.iter().any(|l| l.eq_ignore_ascii_case(label))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_an_account_that_surely_bills_nothing_may_be_purged() {
        for has_sub in [false, true] {
            assert!(!may_bill(Some("canceled"), has_sub));
            assert!(!may_bill(Some("incomplete_expired"), has_sub));
            for s in ["active", "past_due", "incomplete", "unpaid", "paused", "something_new"] {
                assert!(may_bill(Some(s), has_sub), "{s} {has_sub}");
            }
        }
        assert!(!may_bill(None, false), "never subscribed");
        assert!(may_bill(None, true), "a subscription id without a status");
        assert!(!may_bill(Some("trialing"), false), "the legacy app's own trial");
        assert!(may_bill(Some("trialing"), true), "a Stripe trial");
    }

    use super::*;

    #[test]
    fn a_star_matches_any_run_of_characters_and_the_rest_is_literal() {
        let yes = [
            ("*@test.example.com", "a@test.example.com"),
            ("*@test.example.com", "@test.example.com"),
            ("*@test.example.com", "QA+1@Test.Example.COM"),
            ("qa-*@example.com", "qa-@example.com"),
            ("qa-*-*@example.com", "qa-1-2-3@example.com"),
            ("*@*.example.com", "x@a.b.example.com"),
            ("a?b[c]@x.io", "a?b[c]@x.io"),
            ("**@x.io", "y@x.io"),
            ("exact@x.io", "exact@x.io"),
            ("*a*a*", "aXaaY"),
        ];
        for (p, t) in yes {
            assert!(glob_match(p, t), "{p} {t}");
        }
        let no = [
            ("*@test.example.com", "a@test.example.com.evil.io"),
            ("*@test.example.com", "a@xtest.example.com"),
            ("*@test.example.com", "a@example.com"),
            ("*@*.example.com", "x@example.com"),
            ("qa-*@example.com", "qb-1@example.com"),
            ("a?b@x.io", "axb@x.io"),
            ("exact@x.io", "exact@x.io2"),
            ("exact@x.io", "xexact@x.io"),
            ("*a*a*", "aXY"),
            ("", "a"),
        ];
        for (p, t) in no {
            assert!(!glob_match(p, t), "{p} {t}");
        }
        assert!(glob_match("", ""));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn a_pattern_must_name_a_domain() {
        for p in [
            "",
            " ",
            "*",
            "**",
            "*@*",
            "*@*.*",
            "*@*.com",
            "*@example.*",
            "a@*",
            "*@",
            "@",
            "a@b",
            "*@.com",
            "a@b@c.com",
            "no-at.example.com",
            "* @test.example.com",
            "*@test..com",
            "*@test.example.com.",
            "*@*.co.uk",
            "*@qa*.Com.AU",
            "*@*ac.jp",
            "*@*o.uk",
            "*@*e.com",
            "*@qa*example.com",
        ] {
            assert!(email_pattern_suffix(p).is_err(), "{p:?}");
        }
        assert_eq!(email_pattern_suffix("*@Test.Example.com").unwrap(), "@test.example.com");
        assert_eq!(email_pattern_suffix("qa+*@example.com").unwrap(), "@example.com");
        assert_eq!(email_pattern_suffix("*@*.test.example.com").unwrap(), ".test.example.com");
        assert_eq!(email_pattern_suffix("*@qa*.example.com").unwrap(), ".example.com");
        assert_eq!(email_pattern_suffix("one@x.io").unwrap(), "@x.io");
        // A registry suffix is a domain of its own only without a `*` before it.
        assert_eq!(email_pattern_suffix("*@co.uk").unwrap(), "@co.uk");
        assert_eq!(email_pattern_suffix("*@*.test.co.uk").unwrap(), ".test.co.uk");
        assert_eq!(email_pattern_suffix("*@*.co.io.uk").unwrap(), ".co.io.uk");
    }

    #[test]
    fn every_address_a_pattern_matches_ends_with_its_suffix() {
        let cases = [
            ("*@test.example.com", "a@test.example.com"),
            ("*@*.test.example.com", "b@x.test.example.com"),
            ("*@qa*.example.com", "c@qa-1.example.com"),
        ];
        for (p, email) in cases {
            assert!(glob_match(p, email));
            assert!(email.ends_with(&email_pattern_suffix(p).unwrap()), "{p}");
        }
    }
}
