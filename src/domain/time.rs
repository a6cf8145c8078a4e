//! Unix seconds <-> ISO-8601 UTC. D1 stores unix seconds; the API speaks ISO-8601.

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01 (the inverse of `civil_from_days`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC calendar month holding `unix_seconds`: (year, month, start, end), `end`
/// being the first second of the next month.
pub fn month_of(unix_seconds: i64) -> (i64, u32, i64, i64) {
    let (y, m, _) = civil_from_days(unix_seconds.div_euclid(86_400));
    let start = days_from_civil(y, m, 1) * 86_400;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (y, m, start, days_from_civil(ny, nm, 1) * 86_400)
}

/// `1700000000` -> `2023-11-14T22:13:20Z`.
pub fn iso8601(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, (secs % 3600) / 60, secs % 60)
}

/// Parses ISO-8601 text to unix seconds: `YYYY-MM-DD`, optionally followed by `T` (or a
/// space) and `HH:MM`, `:SS`, a fraction (dropped), and `Z` or an offset `±HH:MM` /
/// `±HHMM` / `±HH`; no zone is UTC, a date alone is its midnight. `None` for anything
/// else, including impossible dates (`2023-02-30`).
pub fn parse_iso8601(text: &str) -> Option<i64> {
    let b = text.trim().as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().all(u8::is_ascii_digit).then(|| digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let (y, m, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m as u32, d as u32);
    if civil_from_days(days) != (y, m as u32, d as u32) {
        return None;
    }
    let mut secs = days * 86_400;
    let mut i = 10;
    if i < b.len() {
        if !matches!(b[i], b'T' | b't' | b' ') || b.get(i + 3) != Some(&b':') {
            return None;
        }
        let (h, min) = (num(i + 1, 2)?, num(i + 4, 2)?);
        i += 6;
        let mut s = 0;
        if b.get(i) == Some(&b':') {
            s = num(i + 1, 2)?;
            i += 3;
            if b.get(i) == Some(&b'.') {
                i += 1;
                let start = i;
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                if i == start {
                    return None;
                }
            }
        }
        if h > 23 || min > 59 || s > 60 {
            return None;
        }
        secs += h * 3600 + min * 60 + s;
        match b.get(i) {
            None => {}
            Some(b'Z' | b'z') if i + 1 == b.len() => {}
            Some(&sign @ (b'+' | b'-')) => {
                let oh = num(i + 1, 2)?;
                let om = match b.len() - i {
                    3 => 0,
                    5 => num(i + 3, 2)?,
                    6 if b[i + 3] == b':' => num(i + 4, 2)?,
                    _ => return None,
                };
                if oh > 23 || om > 59 {
                    return None;
                }
                let offset = oh * 3600 + om * 60;
                secs += if sign == b'+' { -offset } else { offset };
            }
            _ => return None,
        }
    }
    Some(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_8601_text_is_parsed_with_its_offset_and_anything_else_refused() {
        for (text, want) in [
            ("2023-11-14T22:13:20Z", 1_700_000_000),
            ("2023-11-14T22:13:20.123Z", 1_700_000_000),
            ("2023-11-14T22:13:20", 1_700_000_000),
            ("2023-11-14 22:13:20z", 1_700_000_000),
            ("2023-11-14T23:13:20+01:00", 1_700_000_000),
            ("2023-11-14T21:13:20-0100", 1_700_000_000),
            ("2023-11-15T00:13:20+02", 1_700_000_000),
            ("2023-11-14T22:13Z", 1_699_999_980),
            ("2023-11-14", 1_699_920_000),
            (" 2000-02-29T00:00:00Z ", 951_782_400),
        ] {
            assert_eq!(parse_iso8601(text), Some(want), "{text}");
        }
        for bad in [
            "",
            "2023",
            "2023-11",
            "2023-13-01",
            "2023-02-30",
            "2023-11-14T",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20ZZ",
            "2023-11-14T22:13:20+1",
            "2023-11-14T22:13:20 +01:00",
            "1700000000",
            "14/11/2023",
            "2023-11-14T22:13:20+01:00:00",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
        for t in [0, 951_782_400, 1_700_000_000, 4_102_444_799] {
            assert_eq!(parse_iso8601(&iso8601(t)), Some(t));
        }
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(iso8601(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn the_calendar_month_of_an_instant_runs_from_its_first_second_to_the_next_months() {
        let (y, m, start, end) = month_of(1_700_000_000);
        assert_eq!(
            (y, m, iso8601(start).as_str(), iso8601(end).as_str()),
            (2023, 11, "2023-11-01T00:00:00Z", "2023-12-01T00:00:00Z")
        );
        let (y, m, start, end) = month_of(951_782_400); // 2000-02-29
        assert_eq!(
            (y, m, iso8601(start).as_str(), iso8601(end).as_str()),
            (2000, 2, "2000-02-01T00:00:00Z", "2000-03-01T00:00:00Z")
        );
        let dec = month_of(1_703_980_800); // 2023-12-31T00:00:00Z
        assert_eq!(
            (iso8601(dec.2).as_str(), iso8601(dec.3).as_str()),
            ("2023-12-01T00:00:00Z", "2024-01-01T00:00:00Z")
        );
        // The last second of a month is in it; the next is not.
        assert_eq!(month_of(end - 1).1, 2);
        assert_eq!(month_of(end).1, 3);
        for days in [-800_i64, 0, 59, 10_957, 20_000, 50_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{days}");
        }
    }
}
