//! Debezium's times → Postgres text: days since the epoch → a date; ms, µs or ns past
//! midnight → a time; ms, µs or ns since the epoch → a timestamp (with Debezium's
//! encodings of `infinity`); µs → an interval. Pure; errors are short phrases for the
//! column.

use std::fmt::Write as _;

use chrono::{DateTime, Datelike as _, NaiveDate, NaiveTime, Timelike as _};
use serde_json::Value;

use super::short;

/// The epoch as days from 0001-01-01 (chrono's "days from CE").
const EPOCH_DAYS_FROM_CE: i64 = 719_163;
/// Debezium's encodings of PostgreSQL `infinity` / `-infinity` timestamps (µs modes).
pub(super) const POS_INFINITY_MICROS: i64 = 9_223_372_036_825_200_000;
const NEG_INFINITY_MICROS: i64 = -9_223_372_036_832_400_000;

fn whole(value: &Value) -> Result<i64, String> {
    value
        .as_i64()
        .ok_or_else(|| format!("expected a whole number, got {}", short(value)))
}

pub(super) fn date(value: &Value) -> Result<String, String> {
    let days = whole(value)?;
    days.checked_add(EPOCH_DAYS_FROM_CE)
        .and_then(|d| i32::try_from(d).ok())
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .map(|d| {
            let mut text = String::with_capacity(10);
            push_date(&mut text, d);
            text
        })
        .ok_or_else(|| format!("{days} days from the epoch is out of range for a date"))
}

/// `unit_micros` = microseconds per unit of the value (1000 for ms, 1 for µs).
pub(super) fn time(value: &Value, unit_micros: i64) -> Result<String, String> {
    let n = whole(value)?;
    let micros = n
        .checked_mul(unit_micros)
        .ok_or_else(|| format!("{n} is out of range for a time"))?;
    time_from_micros(micros)
}

pub(super) fn time_nanos(value: &Value) -> Result<String, String> {
    time_from_micros(whole(value)? / 1_000)
}

fn time_from_micros(micros: i64) -> Result<String, String> {
    const DAY: i64 = 86_400_000_000;
    if micros == DAY {
        return Ok("24:00:00".into());
    }
    if !(0..DAY).contains(&micros) {
        return Err(format!("{micros} µs is not a time of day"));
    }
    let secs = u32::try_from(micros / 1_000_000).map_err(|e| e.to_string())?;
    let nanos = u32::try_from(micros % 1_000_000 * 1_000).map_err(|e| e.to_string())?;
    NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
        .map(|t| {
            let mut text = String::with_capacity(15);
            push_time(&mut text, t);
            text
        })
        .ok_or_else(|| format!("{micros} µs is not a time of day"))
}

pub(super) fn timestamp(value: &Value, unit_micros: i64) -> Result<String, String> {
    let n = whole(value)?;
    if unit_micros == 1 {
        if n >= POS_INFINITY_MICROS {
            return Ok("infinity".into());
        }
        if n <= NEG_INFINITY_MICROS {
            return Ok("-infinity".into());
        }
    }
    let micros = n
        .checked_mul(unit_micros)
        .ok_or_else(|| format!("{n} is out of range for a timestamp"))?;
    timestamp_from_micros(micros)
}

pub(super) fn timestamp_nanos(value: &Value) -> Result<String, String> {
    let n = whole(value)?;
    if n == i64::MAX {
        return Ok("infinity".into());
    }
    if n == i64::MIN {
        return Ok("-infinity".into());
    }
    timestamp_from_micros(n.div_euclid(1_000))
}

fn timestamp_from_micros(micros: i64) -> Result<String, String> {
    DateTime::from_timestamp_micros(micros)
        .map(|t| {
            let t = t.naive_utc();
            let mut text = String::with_capacity(26);
            push_date(&mut text, t.date());
            text.push(' ');
            push_time(&mut text, t.time());
            text
        })
        .ok_or_else(|| format!("{micros} µs from the epoch is out of range for a timestamp"))
}

// Written by hand, not with chrono's `format`, which parses its format string and
// goes through `fmt` for every value: the same text (`%Y-%m-%d`, `%H:%M:%S%.6f`; the
// tests compare them), a fraction of the work.

/// `%Y-%m-%d`: the year in 4 digits, with a sign and at least 4 digits outside 0..=9999.
fn push_date(out: &mut String, d: NaiveDate) {
    let year = d.year();
    match u32::try_from(year) {
        Ok(y) if y <= 9999 => push_digits(out, y, 4),
        _ => {
            let _ = write!(out, "{year:+05}");
        }
    }
    out.push('-');
    push_digits(out, d.month(), 2);
    out.push('-');
    push_digits(out, d.day(), 2);
}

/// `%H:%M:%S%.6f` (the times here have no leap second).
fn push_time(out: &mut String, t: NaiveTime) {
    push_digits(out, t.hour(), 2);
    out.push(':');
    push_digits(out, t.minute(), 2);
    out.push(':');
    push_digits(out, t.second(), 2);
    out.push('.');
    push_digits(out, t.nanosecond() / 1_000 % 1_000_000, 6);
}

/// The last `width` decimal digits of `n`, zero-padded.
fn push_digits(out: &mut String, n: u32, width: u32) {
    let mut div = 10_u32.pow(width - 1);
    while div > 0 {
        out.push(char::from(b'0' + u8::try_from(n / div % 10).unwrap_or(0)));
        div /= 10;
    }
}

pub(super) fn duration(value: &Value) -> Result<String, String> {
    Ok(format!("{} microseconds", whole(value)?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::decode::Logical;
    use crate::map::convert::testing::{conv, ty};

    #[test]
    fn times_and_dates() {
        let d = ty("date", None, None);
        assert_eq!(
            conv(json!(20468), None, &d).expect("ok").as_deref(),
            Some("2026-01-15")
        );
        let ts = ty("timestamp", None, Some(6));
        assert_eq!(
            conv(json!(1_179_150_269_996_577_i64), None, &ts)
                .expect("ok")
                .as_deref(),
            Some("2007-05-14 13:44:29.996577")
        );
        assert_eq!(
            conv(
                json!(1_562_630_400_000_i64),
                Some(Logical::TimestampMillis),
                &ts
            )
            .expect("ok")
            .as_deref(),
            Some("2019-07-09 00:00:00.000000")
        );
        let ts3 = ty("timestamp", None, Some(3));
        assert_eq!(
            conv(json!(1_627_377_701_000_i64), None, &ts3)
                .expect("ok")
                .as_deref(),
            Some("2021-07-27 09:21:41.000000")
        );
        assert_eq!(
            conv(json!(POS_INFINITY_MICROS), None, &ts)
                .expect("ok")
                .as_deref(),
            Some("infinity")
        );
    }

    #[test]
    fn times_of_day_zoned_text_and_intervals() {
        let t = ty("time", None, Some(6));
        assert_eq!(
            conv(json!(63_900_500_000_i64), None, &t)
                .expect("ok")
                .as_deref(),
            Some("17:45:00.500000")
        );
        assert!(conv(json!(-1), None, &t).is_err());
        let tz = ty("timestamptz", None, Some(6));
        assert_eq!(
            conv(
                json!("2026-01-15T01:00:00.123456Z"),
                Some(Logical::Text),
                &tz
            )
            .expect("ok")
            .as_deref(),
            Some("2026-01-15T01:00:00.123456Z")
        );
        let iv = ty("interval", None, None);
        assert_eq!(
            conv(json!(183_600_000_000_i64), None, &iv)
                .expect("ok")
                .as_deref(),
            Some("183600000000 microseconds")
        );
    }

    /// The texts as chrono's `format` writes them (what this module used to call).
    fn chrono_timestamp(micros: i64) -> Option<String> {
        DateTime::from_timestamp_micros(micros)
            .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string())
    }

    fn chrono_date(days: i64) -> Option<String> {
        days.checked_add(EPOCH_DAYS_FROM_CE)
            .and_then(|d| i32::try_from(d).ok())
            .and_then(NaiveDate::from_num_days_from_ce_opt)
            .map(|d| d.format("%Y-%m-%d").to_string())
    }

    fn chrono_time(micros: i64) -> Option<String> {
        let secs = u32::try_from(micros / 1_000_000).ok()?;
        let nanos = u32::try_from(micros % 1_000_000 * 1_000).ok()?;
        NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
            .map(|t| t.format("%H:%M:%S%.6f").to_string())
    }

    const DAY_MICROS: i64 = 86_400_000_000;
    /// chrono's range: years -262143 to 262142.
    const MAX_MICROS: i64 = 8_210_266_876_799_999_999;

    #[test]
    fn hand_written_text_is_chronos_at_the_edges() {
        let days = [
            0,
            -1,
            1,
            59,
            60,
            10_956,
            11_016,
            11_017,
            -25_508,
            -25_509,
            19_782,
            19_783,
            -719_162,
            -719_163,
            -719_164,
            -719_528,
            -719_529,
            2_932_896,
            2_932_897,
            95_026_601,
            -96_465_658,
            i64::MAX,
            i64::MIN,
        ];
        for d in days {
            assert_eq!(date(&json!(d)).ok(), chrono_date(d), "{d} days");
            for micros in [0, 1, 999_999, 43_200_123_456, DAY_MICROS - 1] {
                let m = d.saturating_mul(DAY_MICROS).saturating_add(micros);
                assert_eq!(timestamp_from_micros(m).ok(), chrono_timestamp(m), "{m} µs");
            }
        }
        for m in [
            MAX_MICROS,
            MAX_MICROS + 1,
            -MAX_MICROS,
            i64::MIN,
            -1,
            -999_999,
            -1_000_001,
        ] {
            assert_eq!(timestamp_from_micros(m).ok(), chrono_timestamp(m), "{m} µs");
        }
        assert_eq!(
            timestamp_from_micros(-62_135_596_800_000_001).expect("year 0"),
            "0000-12-31 23:59:59.999999"
        );
        for m in [0, 1, 999_999, 1_000_000, DAY_MICROS - 1] {
            assert_eq!(time_from_micros(m).ok(), chrono_time(m), "{m} µs");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        /// Byte for byte what chrono wrote, over chrono's whole range and beyond, for
        /// µs and ns timestamps, dates and times of day.
        #[test]
        fn hand_written_text_is_chronos(
            micros in proptest::prop_oneof![
                proptest::prelude::any::<i64>(),
                -MAX_MICROS..MAX_MICROS,
                -4_000_000_000_000_000_i64..4_000_000_000_000_000,
            ],
            days in proptest::prop_oneof![
                proptest::prelude::any::<i64>(),
                -100_000_000_i64..100_000_000,
                -1_000_000_i64..3_000_000,
            ],
            tod in 0..DAY_MICROS,
            nanos in proptest::prelude::any::<i64>(),
        ) {
            proptest::prop_assert_eq!(timestamp_from_micros(micros).ok(), chrono_timestamp(micros));
            proptest::prop_assert_eq!(date(&json!(days)).ok(), chrono_date(days));
            proptest::prop_assert_eq!(time_from_micros(tod).ok(), chrono_time(tod));
            if nanos != i64::MAX && nanos != i64::MIN {
                proptest::prop_assert_eq!(
                    timestamp_nanos(&json!(nanos)).ok(),
                    chrono_timestamp(nanos.div_euclid(1_000))
                );
            }
        }
    }
}
