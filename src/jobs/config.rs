//! The queue's settings (size, concurrency, how long finished jobs stay readable) and their
//! limits, plus the duration syntax `--job-retention` accepts.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How big the queue is, how many jobs run at once and how long finished jobs are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    /// Jobs allowed to wait (running ones not counted); one more is refused as full.
    pub max_queued: usize,
    /// Jobs running at the same time (one per device is the default).
    pub concurrency: usize,
    /// Finished jobs also kept in memory, so polling a recent job needs no database read; older
    /// ones are read from their record.
    pub keep_finished: usize,
    /// How long a finished job stays readable (status, events, result); its record is deleted
    /// after that.
    #[serde(with = "secs")]
    pub retention: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_queued: 8,
            concurrency: 1,
            keep_finished: 1000,
            retention: DEFAULT_RETENTION,
        }
    }
}

pub const MAX_CONCURRENCY: usize = 64;
pub const MAX_QUEUED: usize = 10_000;
/// A day: long enough for a client that submitted in the evening to read the result next morning.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Ten years; more is surely a typo.
pub const MAX_RETENTION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl QueueConfig {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), QueueConfigError> {
        let check = |field: &'static str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(QueueConfigError {
                    field,
                    value,
                    min,
                    max,
                })
            }
        };
        check(
            "concurrency",
            self.concurrency as u64,
            1,
            MAX_CONCURRENCY as u64,
        )?;
        check("max_queued", self.max_queued as u64, 0, MAX_QUEUED as u64)?;
        check("keep_finished", self.keep_finished as u64, 1, 1_000_000)?;
        check(
            "job_retention",
            self.retention.as_secs(),
            0,
            MAX_RETENTION.as_secs(),
        )?;
        Ok(())
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// A queue setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid queue setting {field} = {value}: must be between {min} and {max}")]
pub struct QueueConfigError {
    pub field: &'static str,
    pub value: u64,
    pub min: u64,
    pub max: u64,
}

/// A duration as `--job-retention` takes it: whole seconds (`3600`) or a number with one unit
/// `s`, `m`, `h` or `d` (`90m`, `24h`, `7d`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use whole seconds, or a number with s, m, h or d: 24h)"
            ))
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected whole seconds or a number with s, m, h or d"))?;
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?}: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_seconds_or_with_a_unit() {
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 24h "), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "h", "1.5h", "-1", "3w", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn retention_has_a_named_limit() {
        let e = QueueConfig {
            retention: MAX_RETENTION + Duration::from_secs(1),
            ..QueueConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "job_retention");
    }
}
