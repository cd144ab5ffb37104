//! Text → a Postgres binary value, for the texts whose meaning is certain: each function
//! returns `false` (and leaves `out` as it was) for any text it does not read exactly as
//! Postgres' own input function would in redsink's sessions (`TimeZone` UTC), and the
//! caller sends that column as text, for Postgres to parse (or reject) itself. Pure.

use chrono::{Datelike as _, NaiveDate};

/// 2000-01-01, Postgres' epoch, in chrono's days from 0001-01-01 (day 1).
const PG_EPOCH_DAYS: i64 = 730_120;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// An integer of `bytes` bytes (2, 4 or 8), big-endian: `-?[0-9]+` in range.
pub fn int(text: &str, bytes: usize, out: &mut Vec<u8>) -> bool {
    let Some(n) = whole(text) else { return false };
    match bytes {
        2 => i16::try_from(n).is_ok_and(|n| push(out, &n.to_be_bytes())),
        4 => i32::try_from(n).is_ok_and(|n| push(out, &n.to_be_bytes())),
        _ => push(out, &n.to_be_bytes()),
    }
}

fn push(out: &mut Vec<u8>, bytes: &[u8]) -> bool {
    out.extend_from_slice(bytes);
    true
}

/// `-?[0-9]{1,18}` or a 19-digit number in `i64`'s range.
fn whole(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Accumulated negative, so i64::MIN fits.
    let mut n: i64 = 0;
    for b in digits.bytes() {
        n = n.checked_mul(10)?.checked_sub(i64::from(b - b'0'))?;
    }
    if negative { Some(n) } else { n.checked_neg() }
}

/// `true`, `false`, `t` or `f`.
pub fn bool(text: &str, out: &mut Vec<u8>) -> bool {
    match text {
        "true" | "t" => push(out, &[1]),
        "false" | "f" => push(out, &[0]),
        _ => false,
    }
}

/// `-?[0-9]*(\.[0-9]*)?` with at least one digit, at most 1,000 characters: Postgres'
/// binary `numeric` (digits in base 10,000; the scale as written, as `numeric_in` keeps
/// it). Postgres strips the leading and trailing zero digits itself.
pub fn numeric(text: &str, out: &mut Vec<u8>) -> bool {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if text.len() > 1000 || int.len() + frac.len() == 0 || !digits(int) || !digits(frac) {
        return false;
    }
    let int = int.trim_start_matches('0');
    let (int_groups, frac_groups) = (int.len().div_ceil(4), frac.len().div_ceil(4));
    let count = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
    let ndigits = count(int_groups + frac_groups);
    let weight = i16::try_from(int_groups).unwrap_or(i16::MAX) - 1;
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&(if negative { 0x4000_u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&count(frac.len()).to_be_bytes());
    // The integer part's groups end at the point (the first one may be short), the
    // fraction's start there (the last one may be short: zeros follow).
    let lead = int.len() - (int_groups.saturating_sub(1)) * 4;
    let mut group = |part: &[u8], pad_right: usize| {
        let mut d: u16 = 0;
        for &b in part {
            d = d * 10 + u16::from(b - b'0');
        }
        for _ in 0..pad_right {
            d *= 10;
        }
        out.extend_from_slice(&d.to_be_bytes());
    };
    if int_groups > 0 {
        group(&int.as_bytes()[..lead], 0);
        for chunk in int.as_bytes()[lead..].chunks(4) {
            group(chunk, 0);
        }
    }
    for chunk in frac.as_bytes().chunks(4) {
        group(chunk, 4 - chunk.len());
    }
    true
}

/// `YYYY-MM-DD` (years 1–9999): days since 2000-01-01, as an `i32`.
pub fn date(text: &str, out: &mut Vec<u8>) -> bool {
    let Some((days, "")) = civil_date(text) else {
        return false;
    };
    i32::try_from(days - PG_EPOCH_DAYS).is_ok_and(|d| push(out, &d.to_be_bytes()))
}

/// A date, or a date and a time of day (`T` or a space between; at most 6 fractional
/// digits), with, for `with_zone`, an optional `Z`, `±HH` or `±HH:MM` (without, the
/// time is UTC, the session's zone), and for a `timestamp` an optional `Z` (which
/// Postgres ignores there): microseconds since 2000-01-01 00:00 UTC, as an `i64`.
pub fn timestamp(text: &str, with_zone: bool, out: &mut Vec<u8>) -> bool {
    let Some((days, rest)) = civil_date(text) else {
        return false;
    };
    let (time_micros, zone) = if rest.is_empty() {
        (0, "")
    } else {
        let Some(rest) = rest.strip_prefix(['T', ' ']) else {
            return false;
        };
        let Some(parsed) = time_of_day(rest) else {
            return false;
        };
        parsed
    };
    let offset_micros = match zone {
        "" | "Z" => 0,
        _ if with_zone => match offset(zone) {
            Some(seconds) => seconds * 1_000_000,
            None => return false,
        },
        _ => return false,
    };
    let micros = (days - PG_EPOCH_DAYS) * MICROS_PER_DAY + time_micros - offset_micros;
    push(out, &micros.to_be_bytes())
}

/// `YYYY-MM-DD` at the start of `text` (years 1–9999, a real date): chrono's days from
/// 0001-01-01 (day 1), and what follows it.
fn civil_date(text: &str) -> Option<(i64, &str)> {
    let b = text.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = i32::try_from(number(&b[0..4])?).ok()?;
    let month = u32::try_from(number(&b[5..7])?).ok()?;
    let day = u32::try_from(number(&b[8..10])?).ok()?;
    if year == 0 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    Some((i64::from(date.num_days_from_ce()), &text[10..]))
}

/// `HH:MM:SS(.f{1,6})?` and what follows: microseconds past midnight.
fn time_of_day(text: &str) -> Option<(i64, &str)> {
    let b = text.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, s) = (number(&b[0..2])?, number(&b[3..5])?, number(&b[6..8])?);
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    let mut micros = ((h * 60 + m) * 60 + s) * 1_000_000;
    let mut rest = &text[8..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 6 {
            return None;
        }
        let mut f = number(&frac.as_bytes()[..n])?;
        for _ in n..6 {
            f *= 10;
        }
        micros += f;
        rest = &frac[n..];
    }
    Some((micros, rest))
}

/// `±HH` or `±HH:MM` (hours up to 15, as Postgres' zone offsets): seconds east of UTC.
fn offset(zone: &str) -> Option<i64> {
    let (sign, rest) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    let b = rest.as_bytes();
    let (h, m) = match b.len() {
        2 => (number(b)?, 0),
        5 if b[2] == b':' => (number(&b[..2])?, number(&b[3..])?),
        _ => return None,
    };
    (h <= 15 && m <= 59).then_some(sign * (h * 3600 + m * 60))
}

/// ASCII digits as a number; `None` for anything else.
fn number(digits: &[u8]) -> Option<i64> {
    digits.iter().try_fold(0_i64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(f: impl FnOnce(&mut Vec<u8>) -> bool) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        f(&mut out).then_some(out)
    }

    fn micros(text: &str, with_zone: bool) -> Option<i64> {
        let b = bytes(|o| timestamp(text, with_zone, o))?;
        Some(i64::from_be_bytes(b.try_into().ok()?))
    }

    #[test]
    fn integers_in_range_and_nothing_else() {
        assert_eq!(bytes(|o| int("-12", 2, o)), Some(vec![0xff, 0xf4]));
        assert_eq!(bytes(|o| int("32767", 2, o)), Some(vec![0x7f, 0xff]));
        assert_eq!(bytes(|o| int("32768", 2, o)), None);
        assert_eq!(
            bytes(|o| int("-9223372036854775808", 8, o)),
            Some(i64::MIN.to_be_bytes().to_vec())
        );
        assert_eq!(bytes(|o| int("9223372036854775808", 8, o)), None);
        for bad in ["", "-", "+1", " 1", "1 ", "1.0", "1e3", "0x10", "１"] {
            assert_eq!(bytes(|o| int(bad, 8, o)), None, "{bad:?}");
        }
    }

    #[test]
    fn numerics_in_base_ten_thousand_with_their_written_scale() {
        let n = |t: &str| bytes(|o| numeric(t, o));
        // ndigits, weight, sign, dscale, digits.
        let be = |v: &[i32]| {
            v.iter()
                .flat_map(|&x| i16::try_from(x).expect("a test digit fits").to_be_bytes())
                .collect::<Vec<u8>>()
        };
        assert_eq!(n("123.45"), Some(be(&[2, 0, 0, 2, 123, 4500])));
        assert_eq!(n("-12345.6"), Some(be(&[3, 1, 0x4000, 1, 1, 2345, 6000])));
        assert_eq!(n("0.0001"), Some(be(&[1, -1, 0, 4, 1])));
        assert_eq!(n("007"), Some(be(&[1, 0, 0, 0, 7])));
        assert_eq!(n("0"), Some(be(&[0, -1, 0, 0])));
        assert_eq!(n(".5"), Some(be(&[1, -1, 0, 1, 5000])));
        for bad in [
            "", "-", ".", "1e5", "NaN", "Infinity", "+1", "1.2.3", " 1", "1,5",
        ] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timestamps_count_microseconds_from_2000_in_utc() {
        assert_eq!(micros("2000-01-01 00:00:00", false), Some(0));
        assert_eq!(micros("2000-01-01", true), Some(0));
        assert_eq!(micros("1999-12-31T23:59:59.999999Z", true), Some(-1));
        assert_eq!(micros("2000-01-01T02:00:00+02:00", true), Some(0));
        assert_eq!(
            micros("2000-01-01T00:00:00.5-01", true),
            Some(3_600_500_000)
        );
        assert_eq!(
            micros("2024-02-29 12:00:00.25", false),
            Some(762_523_200_250_000)
        );
        for bad in [
            "2023-02-29 00:00:00",
            "2000-01-01 24:00:00",
            "2000-01-01 23:59:60",
            "2000-01-01 00:00:00.1234567",
            "0000-01-01",
            "10000-01-01",
            "2000-1-01",
            "2000-01-01 00:00",
            "2000-01-01 00:00:00 UTC",
            "infinity",
            "2000-01-01T00:00:00+16",
        ] {
            assert_eq!(micros(bad, true), None, "{bad:?}");
        }
        // A zone other than Z on a timestamp without one: left to Postgres.
        assert_eq!(micros("2000-01-01T00:00:00+02:00", false), None);
        assert_eq!(micros("2000-01-01T00:00:00Z", false), Some(0));
    }

    #[test]
    fn dates_count_days_from_2000() {
        let d = |t: &str| {
            bytes(|o| date(t, o)).map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
        };
        assert_eq!(d("2000-01-01"), Some(0));
        assert_eq!(d("1970-01-01"), Some(-10_957));
        assert_eq!(d("0001-01-01"), Some(-730_119));
        assert_eq!(d("2000-01-01 00:00:00"), None);
        assert_eq!(d("2001-02-29"), None);
    }

    #[test]
    fn booleans_as_redsink_writes_them() {
        assert_eq!(bytes(|o| bool("t", o)), Some(vec![1]));
        assert_eq!(bytes(|o| bool("false", o)), Some(vec![0]));
        assert_eq!(bytes(|o| bool("yes", o)), None);
    }
}
