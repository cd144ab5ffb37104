//! Debezium's times → Postgres text: days since the epoch → a date; ms, µs or ns past
//! midnight → a time; ms, µs or ns since the epoch → a timestamp (with Debezium's
//! encodings of `infinity`); µs → an interval. Pure; errors are short phrases for the
//! column.

use chrono::{DateTime, NaiveDate, NaiveTime};
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
        .map(|d| d.format("%Y-%m-%d").to_string())
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
        .map(|t| t.format("%H:%M:%S%.6f").to_string())
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
        .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string())
        .ok_or_else(|| format!("{micros} µs from the epoch is out of range for a timestamp"))
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
}
