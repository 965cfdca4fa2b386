//! Maintenance windows in each VM's own IANA time zone (DESIGN.md §5): "start at 03:00 local for
//! 4h on Saturdays" means 03:00 wall-clock time in the VM's zone, daylight saving included; a window
//! may run past midnight; its length is elapsed time. No install starts when the window left is
//! shorter than the expected duration.

use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;

use crate::api::{DayOfWeek, MaintenanceWindow};

/// A parsed window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub hour: i8,
    pub minute: i8,
    pub length: Duration,
    /// Days the window opens on (by its start); empty means every day.
    pub days: Vec<Weekday>,
}

fn weekday(d: DayOfWeek) -> Weekday {
    match d {
        DayOfWeek::Monday => Weekday::Monday,
        DayOfWeek::Tuesday => Weekday::Tuesday,
        DayOfWeek::Wednesday => Weekday::Wednesday,
        DayOfWeek::Thursday => Weekday::Thursday,
        DayOfWeek::Friday => Weekday::Friday,
        DayOfWeek::Saturday => Weekday::Saturday,
        DayOfWeek::Sunday => Weekday::Sunday,
    }
}

impl Window {
    /// Parse a window of the API (admission already checked the formats; errors name the field).
    pub fn parse(w: &MaintenanceWindow) -> Result<Window, String> {
        let (h, m) = w
            .start
            .split_once(':')
            .ok_or_else(|| format!("maintenanceWindow.start {:?} is not HH:MM", w.start))?;
        let hour: i8 = h
            .parse()
            .map_err(|_| format!("maintenanceWindow.start {:?} is not HH:MM", w.start))?;
        let minute: i8 = m
            .parse()
            .map_err(|_| format!("maintenanceWindow.start {:?} is not HH:MM", w.start))?;
        if !(0..24).contains(&hour) || !(0..60).contains(&minute) {
            return Err(format!(
                "maintenanceWindow.start {:?} is not a time of day",
                w.start
            ));
        }
        let length = super::duration::parse(&w.duration)
            .map_err(|e| format!("maintenanceWindow.duration: {e}"))?;
        if length.is_zero() || length > Duration::from_secs(24 * 3600) {
            return Err(format!(
                "maintenanceWindow.duration {:?} must be more than 0 and at most 24h",
                w.duration
            ));
        }
        Ok(Window {
            hour,
            minute,
            length,
            days: w.days_of_week.iter().copied().map(weekday).collect(),
        })
    }

    fn opens_on(&self, d: Date) -> bool {
        self.days.is_empty() || self.days.contains(&d.weekday())
    }

    /// The opening on a local date, as an instant (a start time that does not exist that day,
    /// in a spring-forward gap, opens at the first instant after the gap).
    fn opening(&self, d: Date, tz: &TimeZone) -> Option<Timestamp> {
        tz.to_zoned(d.at(self.hour, self.minute, 0, 0))
            .ok()
            .map(|z| z.timestamp())
    }

    /// The occurrence containing `now`: (start, end).
    pub fn current(&self, tz: &TimeZone, now: Timestamp) -> Option<(Timestamp, Timestamp)> {
        let today = now.to_zoned(tz.clone()).date();
        // A window lasts at most 24h, so only yesterday's and today's openings can contain now.
        for d in [today.yesterday().ok()?, today] {
            if !self.opens_on(d) {
                continue;
            }
            let start = self.opening(d, tz)?;
            let end = start + self.length;
            if start <= now && now < end {
                return Some((start, end));
            }
        }
        None
    }

    /// The next opening after `now` (within the next eight days).
    pub fn next_opening(&self, tz: &TimeZone, now: Timestamp) -> Option<Timestamp> {
        let mut d = now.to_zoned(tz.clone()).date();
        for _ in 0..9 {
            if self.opens_on(d)
                && let Some(t) = self.opening(d, tz)
                && t > now
            {
                return Some(t);
            }
            d = d.tomorrow().ok()?;
        }
        None
    }

    /// Whether an install expected to take `expected` may start now.
    pub fn may_start(&self, tz: &TimeZone, now: Timestamp, expected: Duration) -> bool {
        self.current(tz, now).is_some_and(|(_, end)| {
            Duration::try_from(end.duration_since(now)).is_ok_and(|left| left >= expected)
        })
    }
}

/// The time zone of a VM; an unknown name is an error that names the field.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| format!("spec.timeZone {name:?} is not a known IANA time zone"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(start: &str, duration: &str, days: &[DayOfWeek]) -> Window {
        Window::parse(&MaintenanceWindow {
            start: start.into(),
            duration: duration.into(),
            days_of_week: days.to_vec(),
        })
        .expect("window")
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn local_time_follows_daylight_saving() {
        let paris = time_zone("Europe/Paris").expect("tz");
        let win = w("03:00", "2h", &[]);
        // Winter: 03:00 CET is 02:00 UTC. Summer: 03:00 CEST is 01:00 UTC.
        assert_eq!(
            win.current(&paris, at("2026-01-15T02:30:00Z")).map(|c| c.0),
            Some(at("2026-01-15T02:00:00Z"))
        );
        assert_eq!(
            win.current(&paris, at("2026-07-15T01:30:00Z")).map(|c| c.0),
            Some(at("2026-07-15T01:00:00Z"))
        );
        assert!(win.current(&paris, at("2026-07-15T03:30:00Z")).is_none());
    }

    #[test]
    fn a_start_in_the_spring_forward_gap_opens_after_the_gap() {
        // 2026-03-29: Paris jumps from 02:00 to 03:00; 02:30 does not exist that day.
        let paris = time_zone("Europe/Paris").expect("tz");
        let win = w("02:30", "1h", &[]);
        let (start, end) = win
            .current(&paris, at("2026-03-29T01:45:00Z"))
            .expect("open");
        assert_eq!(start, at("2026-03-29T01:30:00Z"));
        assert_eq!(end, at("2026-03-29T02:30:00Z"));
    }

    #[test]
    fn windows_run_past_midnight_and_open_only_on_their_days() {
        let ny = time_zone("America/New_York").expect("tz");
        let win = w("22:00", "4h", &[DayOfWeek::Friday]);
        // Friday 2026-11-20 22:00 EST = Saturday 03:00 UTC; open until 07:00 UTC.
        assert!(
            win.current(&ny, at("2026-11-21T05:00:00Z")).is_some(),
            "Saturday 00:00 local, still Friday's window"
        );
        assert!(
            win.current(&ny, at("2026-11-22T05:00:00Z")).is_none(),
            "Saturday's window does not exist"
        );
        assert_eq!(
            win.next_opening(&ny, at("2026-11-22T05:00:00Z")),
            Some(at("2026-11-28T03:00:00Z"))
        );
    }

    #[test]
    fn no_install_starts_when_the_window_left_is_too_short() {
        let utc = time_zone("UTC").expect("tz");
        let win = w("02:00", "3h", &[]);
        assert!(win.may_start(&utc, at("2026-11-22T02:00:00Z"), Duration::from_secs(3600)));
        assert!(win.may_start(&utc, at("2026-11-22T04:00:00Z"), Duration::from_secs(3600)));
        assert!(!win.may_start(&utc, at("2026-11-22T04:00:01Z"), Duration::from_secs(3600)));
        assert!(
            !win.may_start(&utc, at("2026-11-22T05:00:00Z"), Duration::ZERO),
            "the end is outside"
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = Window::parse(&MaintenanceWindow {
            start: "25:00".into(),
            duration: "1h".into(),
            days_of_week: vec![],
        })
        .unwrap_err();
        assert!(e.contains("maintenanceWindow.start"), "{e}");
        assert!(
            time_zone("Mars/Olympus")
                .unwrap_err()
                .contains("spec.timeZone")
        );
    }

    proptest! {
        /// Whatever the zone, time and window, `current` contains now, lasts exactly the window's
        /// length, and opens on an allowed local day at the local start time (or just after a gap).
        #[test]
        fn current_is_consistent(secs in 1_700_000_000i64..1_900_000_000, h in 0i8..24, m in 0i8..60, len_min in 60u64..1440, zone in prop::sample::select(vec!["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]), day in 0usize..7) {
            let days = [DayOfWeek::Monday, DayOfWeek::Tuesday, DayOfWeek::Wednesday, DayOfWeek::Thursday, DayOfWeek::Friday, DayOfWeek::Saturday, DayOfWeek::Sunday];
            let win = Window { hour: h, minute: m, length: Duration::from_secs(len_min * 60), days: vec![weekday(days[day])] };
            let tz = time_zone(zone).expect("tz");
            let now = Timestamp::from_second(secs).expect("ts");
            if let Some((start, end)) = win.current(&tz, now) {
                prop_assert!(start <= now && now < end);
                prop_assert_eq!(Duration::try_from(end.duration_since(start)).ok(), Some(win.length));
                let local = start.to_zoned(tz.clone());
                prop_assert_eq!(local.date().weekday(), weekday(days[day]));
            }
            if let Some(next) = win.next_opening(&tz, now) {
                prop_assert!(next > now);
                prop_assert!(next.duration_since(now) <= jiff::SignedDuration::from_hours(24 * 8));
            }
        }
    }
}
