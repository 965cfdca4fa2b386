//! Ring membership and the release cadence (Windows Autopatch, DESIGN.md §2).
//!
//! A VM belongs to the lowest-`order` ring whose selector matches it; VMs no selector ring takes are
//! shared among the `share` rings by a stable hash of the VM's uid, so adding VMs never moves the
//! ones already assigned. Only AutomaticByPlatform VMs join rollouts.

use std::collections::BTreeMap;

use jiff::civil::{Date, Weekday};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use sha2::{Digest, Sha256};

use super::assign::selector_matches;

/// A ring, reduced to what membership needs.
#[derive(Clone, Debug)]
pub struct RingRule<'a> {
    pub name: &'a str,
    pub order: i32,
    pub selector: Option<&'a LabelSelector>,
    pub share: Option<i32>,
}

/// The ring a VM belongs to, if any.
pub fn ring_of<'a>(
    rings: &[RingRule<'a>],
    uid: &str,
    labels: &BTreeMap<String, String>,
) -> Option<&'a str> {
    let mut ordered: Vec<&RingRule<'a>> = rings.iter().collect();
    ordered.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.name.cmp(b.name)));
    if let Some(r) = ordered
        .iter()
        .find(|r| r.selector.is_some_and(|s| selector_matches(s, labels)))
    {
        return Some(r.name);
    }
    // Shares: weighted rendezvous hashing of (uid, ring). Each VM goes to the ring with the best
    // score, so changing one ring's share only moves VMs into or out of that ring. Shares under
    // 100% in total leave the rest in no ring (an implicit bucket with the remaining weight).
    let shares: Vec<(&str, f64)> = ordered
        .iter()
        .filter(|r| r.selector.is_none())
        .map(|r| (r.name, f64::from(r.share.unwrap_or(0).clamp(0, 100))))
        .collect();
    let total: f64 = shares.iter().map(|s| s.1).sum();
    let rest = (100.0 - total).max(0.0);
    let score = |bucket: &str, weight: f64| -> f64 {
        let d = Sha256::digest(format!("{uid}\u{0}{bucket}").as_bytes());
        let x = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        // u in (0, 1]; -ln(u) / w is exponential with rate w: the smallest wins with probability w / sum.
        let u = ((x >> 11) as f64 + 1.0) / ((1u64 << 53) as f64);
        -u.ln() / weight
    };
    let mut best: Option<(&str, f64)> = None;
    for (name, w) in shares.iter().copied().filter(|s| s.1 > 0.0) {
        let sc = score(name, w);
        if best.is_none_or(|b| sc < b.1) {
            best = Some((name, sc));
        }
    }
    if rest > 0.0
        && let Some(b) = best
        && score("", rest) < b.1
    {
        return None;
    }
    best.map(|b| b.0)
}

/// The `n`th `weekday` of a month (Patch Tuesday is the second Tuesday).
pub fn nth_weekday(year: i16, month: i8, weekday: Weekday, n: u8) -> Option<Date> {
    let first = Date::new(year, month, 1).ok()?;
    let offset =
        (weekday.to_monday_zero_offset() - first.weekday().to_monday_zero_offset()).rem_euclid(7);
    let day = 1 + offset + 7 * (i8::try_from(n).ok()? - 1);
    Date::new(year, month, day).ok()
}

/// The release day of the month that contains `today`, or the next one if it has passed.
pub fn next_release(today: Date, weekday: Weekday, n: u8) -> Option<Date> {
    let this = nth_weekday(today.year(), today.month(), weekday, n)?;
    if this >= today {
        return Some(this);
    }
    let next = today
        .first_of_month()
        .checked_add(jiff::Span::new().months(1))
        .ok()?;
    nth_weekday(next.year(), next.month(), weekday, n)
}

/// The release cadence: a monthly release on the `nth` `weekday` at a UTC time, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cadence {
    Off,
    Monthly {
        nth: u8,
        weekday: Weekday,
        hour: i8,
        minute: i8,
    },
}

impl Cadence {
    /// Parse "<nth> <weekday> <HH:MM>" (UTC), e.g. "2 Tuesday 17:00", or "off".
    pub fn parse(text: &str) -> Result<Cadence, String> {
        let err = || {
            format!(
                "release cadence {text:?} must be \"<nth 1-4> <weekday> <HH:MM>\" in UTC, e.g. \"2 Tuesday 17:00\", or \"off\""
            )
        };
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(Cadence::Off);
        }
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [nth, day, hhmm] = parts.as_slice() else {
            return Err(err());
        };
        let nth: u8 = nth
            .parse()
            .ok()
            .filter(|n| (1..=4).contains(n))
            .ok_or_else(err)?;
        let weekday = match day.to_ascii_lowercase().as_str() {
            "monday" => Weekday::Monday,
            "tuesday" => Weekday::Tuesday,
            "wednesday" => Weekday::Wednesday,
            "thursday" => Weekday::Thursday,
            "friday" => Weekday::Friday,
            "saturday" => Weekday::Saturday,
            "sunday" => Weekday::Sunday,
            _ => return Err(err()),
        };
        let (h, m) = hhmm.split_once(':').ok_or_else(err)?;
        let hour: i8 = h
            .parse()
            .ok()
            .filter(|h| (0..24).contains(h))
            .ok_or_else(err)?;
        let minute: i8 = m
            .parse()
            .ok()
            .filter(|m| (0..60).contains(m))
            .ok_or_else(err)?;
        Ok(Cadence::Monthly {
            nth,
            weekday,
            hour,
            minute,
        })
    }

    fn release_in(&self, year: i16, month: i8) -> Option<jiff::Timestamp> {
        let Cadence::Monthly {
            nth,
            weekday,
            hour,
            minute,
        } = *self
        else {
            return None;
        };
        let d = nth_weekday(year, month, weekday, nth)?;
        d.at(hour, minute, 0, 0)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The latest release at or before `now`.
    pub fn latest(&self, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
        let this = self.release_in(today.year(), today.month())?;
        if this <= now {
            return Some(this);
        }
        let prev = today.first_of_month().yesterday().ok()?;
        self.release_in(prev.year(), prev.month())
    }

    /// The first release after `now`.
    pub fn next(&self, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
        let this = self.release_in(today.year(), today.month())?;
        if this > now {
            return Some(this);
        }
        let next = today
            .first_of_month()
            .checked_add(jiff::Span::new().months(1))
            .ok()?;
        self.release_in(next.year(), next.month())
    }
}

impl std::fmt::Display for Cadence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cadence::Off => write!(f, "off"),
            Cadence::Monthly {
                nth,
                weekday,
                hour,
                minute,
            } => write!(f, "{nth} {weekday:?} {hour:02}:{minute:02}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cadence_parses_and_finds_patch_tuesday() {
        let c = Cadence::parse("2 Tuesday 17:00").expect("parse");
        let now: jiff::Timestamp = "2026-11-22T00:00:00Z".parse().expect("ts");
        assert_eq!(
            c.latest(now).map(|t| t.to_string()),
            Some("2026-11-10T17:00:00Z".into())
        );
        assert_eq!(
            c.next(now).map(|t| t.to_string()),
            Some("2026-12-08T17:00:00Z".into())
        );
        let early: jiff::Timestamp = "2026-11-10T16:59:00Z".parse().expect("ts");
        assert_eq!(
            c.latest(early).map(|t| t.to_string()),
            Some("2026-10-13T17:00:00Z".into())
        );
        assert_eq!(Cadence::parse("off"), Ok(Cadence::Off));
        assert_eq!(Cadence::Off.latest(now), None);
        for bad in [
            "5 Tuesday 17:00",
            "2 Tusday 17:00",
            "2 Tuesday 25:00",
            "Tuesday",
        ] {
            let e = Cadence::parse(bad).expect_err(bad);
            assert!(e.contains("<nth 1-4> <weekday> <HH:MM>"), "{e}");
        }
        assert_eq!(c.to_string(), "2 Tuesday 17:00");
    }

    use super::*;
    use proptest::prelude::*;

    fn sel(k: &str, v: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
            match_expressions: None,
        }
    }

    #[test]
    fn selector_rings_first_then_shares_by_stable_hash() {
        let test = sel("automend.io/ring", "test");
        let rings = vec![
            RingRule {
                name: "broad",
                order: 3,
                selector: None,
                share: Some(90),
            },
            RingRule {
                name: "test",
                order: 0,
                selector: Some(&test),
                share: None,
            },
            RingRule {
                name: "fast",
                order: 2,
                selector: None,
                share: Some(10),
            },
        ];
        let labelled = BTreeMap::from([("automend.io/ring".to_string(), "test".to_string())]);
        assert_eq!(ring_of(&rings, "any", &labelled), Some("test"));
        let mut counts = BTreeMap::new();
        for i in 0..10_000 {
            *counts
                .entry(ring_of(&rings, &format!("uid-{i}"), &BTreeMap::new()))
                .or_insert(0) += 1;
        }
        let fast = counts[&Some("fast")];
        assert!(
            (800..1200).contains(&fast),
            "fast got {fast} of 10000 for a 10% share"
        );
        assert_eq!(counts.get(&None), None, "100% is shared out");
        let half = vec![RingRule {
            name: "first",
            order: 1,
            selector: None,
            share: Some(50),
        }];
        let placed = (0..10_000)
            .filter(|i| ring_of(&half, &format!("uid-{i}"), &BTreeMap::new()).is_some())
            .count();
        assert!(
            (4_700..5_300).contains(&placed),
            "a 50% share took {placed} of 10000"
        );
    }

    #[test]
    fn patch_tuesday() {
        assert_eq!(
            nth_weekday(2026, 11, Weekday::Tuesday, 2),
            Some(Date::new(2026, 11, 10).expect("date"))
        );
        assert_eq!(
            nth_weekday(2026, 12, Weekday::Tuesday, 2),
            Some(Date::new(2026, 12, 8).expect("date"))
        );
        let today = Date::new(2026, 11, 22).expect("date");
        assert_eq!(
            next_release(today, Weekday::Tuesday, 2),
            Some(Date::new(2026, 12, 8).expect("date"))
        );
        assert_eq!(
            nth_weekday(2026, 2, Weekday::Monday, 5),
            None,
            "no fifth Monday in February 2026"
        );
    }

    proptest! {
        /// Moving share from one ring to another only moves VMs out of the shrunk ring or into the
        /// grown one; every other VM stays where it was.
        #[test]
        fn changing_shares_moves_little(uids in prop::collection::vec("[a-f0-9]{12}", 1..200), a in 0i32..40, grow in 1i32..40) {
            let rules = |first: i32| vec![
                RingRule { name: "first", order: 1, selector: None, share: Some(first) },
                RingRule { name: "fast", order: 2, selector: None, share: Some(20) },
                RingRule { name: "broad", order: 3, selector: None, share: Some(80 - first) },
            ];
            let (before, after) = (rules(a), rules(a + grow));
            for u in &uids {
                let (x, y) = (ring_of(&before, u, &BTreeMap::new()), ring_of(&after, u, &BTreeMap::new()));
                prop_assert!(x.is_some() && y.is_some(), "shares summing to 100% place every VM");
                if x != y {
                    prop_assert!(y == Some("first") || x == Some("broad"), "{} moved from {:?} to {:?}", u, x, y);
                }
            }
        }

        #[test]
        fn the_second_tuesday_is_a_tuesday_between_the_8th_and_14th(year in 2000i16..2100, month in 1i8..=12) {
            let d = nth_weekday(year, month, Weekday::Tuesday, 2).expect("exists");
            prop_assert_eq!(d.weekday(), Weekday::Tuesday);
            prop_assert!((8..=14).contains(&d.day()));
        }
    }
}
