//! Go-style duration strings ("30s", "10m", "1h30m", "1.5h", "250ms"), as the API uses them and
//! CEL's `duration()` checks them at admission.

use std::time::Duration;

/// Parse a Go-style duration. Negative durations are rejected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total = 0f64;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number: f64 = s[start..i].parse().map_err(|_| {
            format!("{text:?} is not a duration such as \"30s\", \"10m\" or \"1h30m\"")
        })?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = match &s[ustart..i] {
            "ns" => 1e-9,
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?}; use ns, us, ms, s, m or h"
                ));
            }
        };
        total += number * unit;
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("{text:?}: {e}"))
}

/// Format a duration as Go does for whole seconds ("1h2m3s", "5m0s", "45s").
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// A duration from a field admission should have checked; when it is not one after all, the
/// fallback is used and a warning names the object and the field, so a silent change of
/// behaviour is never silent.
pub fn parse_or(
    text: &str,
    fallback: Duration,
    object: impl std::fmt::Display,
    field: &str,
) -> Duration {
    match parse(text) {
        Ok(d) => d,
        Err(error) => {
            tracing::warn!(%object, field, %error, fallback = %format(fallback), "not a duration; using the fallback");
            fallback
        }
    }
}

/// Add a std duration to a timestamp (saturating at the end of time).
pub fn add(ts: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| ts.checked_add(d).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

/// How long from `from` until `to` (zero when `to` has passed).
pub fn until(from: jiff::Timestamp, to: jiff::Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

/// The earliest of several moments (or durations): "wake at the earliest of".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Earliest<T>(Option<T>);

impl<T: Ord + Copy> Earliest<T> {
    /// Also consider `t`.
    pub fn at(&mut self, t: T) {
        self.0 = Some(self.0.map_or(t, |w| w.min(t)));
    }

    /// Also consider `t`, if any.
    pub fn maybe(&mut self, t: Option<T>) {
        if let Some(t) = t {
            self.at(t);
        }
    }

    pub fn get(self) -> Option<T> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_keeps_the_minimum_and_fallbacks_apply() {
        let mut e = Earliest::default();
        assert_eq!(e.get(), None::<u32>);
        e.at(5);
        e.at(3);
        e.maybe(None);
        e.maybe(Some(4));
        assert_eq!(e.get(), Some(3));
        assert_eq!(
            parse_or("1d", Duration::from_secs(7), "ring x", "spec.deferral"),
            Duration::from_secs(7)
        );
        assert_eq!(
            parse_or("2m", Duration::ZERO, "ring x", "spec.deferral"),
            Duration::from_secs(120)
        );
        let t: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().expect("ts");
        assert_eq!(
            add(t, Duration::from_secs(60)).to_string(),
            "2026-01-01T00:01:00Z"
        );
        assert_eq!(
            add(jiff::Timestamp::MAX, Duration::from_secs(60)),
            jiff::Timestamp::MAX
        );
        assert_eq!(until(add(t, Duration::from_secs(9)), t), Duration::ZERO);
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert!(parse("1d").unwrap_err().contains("unknown unit"));
        assert!(parse("").is_err());
        assert!(parse("h").is_err());
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(format(Duration::from_secs(300)), "5m0s");
        assert_eq!(format(Duration::from_secs(45)), "45s");
    }
}
