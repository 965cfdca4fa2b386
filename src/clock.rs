//! Injectable time (DESIGN.md §5): an accelerated clock makes a month of rollout pass in minutes in
//! the demo and the tests. Every process (controller, simulator, agent) given the same
//! `--clock-start` and `--clock-speed` agrees on the time: virtual = start + (real − start) × speed.
//!
//! Only the patching schedule runs on this clock (release times, deferrals, deadlines, maintenance
//! windows, bake times, the SLO). Heartbeats and remediation backoff are about live processes and
//! stay in real time.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clock {
    start: Timestamp,
    speed: f64,
}

/// Command-line settings of the clock.
#[derive(Clone, Debug, clap::Args)]
pub struct ClockArgs {
    /// Run the patching schedule this many times faster than real time (1 to 1000000).
    #[arg(long, env = "AUTOMEND_CLOCK_SPEED", default_value_t = 1.0)]
    pub clock_speed: f64,
    /// The real instant (RFC 3339) at which the accelerated clock equals real time. Required with
    /// --clock-speed, and the same for every process.
    #[arg(long, env = "AUTOMEND_CLOCK_START")]
    pub clock_start: Option<Timestamp>,
}

impl Default for ClockArgs {
    fn default() -> Self {
        ClockArgs {
            clock_speed: 1.0,
            clock_start: None,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::real()
    }
}

impl Clock {
    pub fn real() -> Clock {
        Clock {
            start: Timestamp::UNIX_EPOCH,
            speed: 1.0,
        }
    }

    pub fn accelerated(start: Timestamp, speed: f64) -> Result<Clock, String> {
        if !(1.0..=1_000_000.0).contains(&speed) {
            return Err(format!("--clock-speed {speed} must be from 1 to 1000000"));
        }
        Ok(Clock { start, speed })
    }

    pub fn from_args(args: &ClockArgs) -> Result<Clock, String> {
        if args.clock_speed == 1.0 {
            return Ok(Clock::real());
        }
        let start = args.clock_start.ok_or_else(|| {
            "--clock-start is required with --clock-speed, so that every process agrees on the time".to_string()
        })?;
        Clock::accelerated(start, args.clock_speed)
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// The clock's time at a real instant.
    pub fn at(&self, real: Timestamp) -> Timestamp {
        if self.speed == 1.0 {
            return real;
        }
        let elapsed = real.duration_since(self.start).as_secs_f64() * self.speed;
        self.start
            .checked_add(SignedDuration::from_secs_f64(elapsed))
            .unwrap_or(if elapsed > 0.0 {
                Timestamp::MAX
            } else {
                Timestamp::MIN
            })
    }

    pub fn now(&self) -> Timestamp {
        self.at(Timestamp::now())
    }

    /// How long to wait in real time for `d` to pass on this clock (at least a millisecond).
    pub fn real_duration(&self, d: Duration) -> Duration {
        d.div_f64(self.speed).max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn accelerated_clocks_agree_and_run_faster() {
        let start = at("2026-11-10T00:00:00Z");
        let c = Clock::accelerated(start, 1440.0).expect("clock");
        // One real minute is one virtual day.
        assert_eq!(c.at(at("2026-11-10T00:01:00Z")), at("2026-11-11T00:00:00Z"));
        assert_eq!(c.at(start), start);
        assert_eq!(
            c.real_duration(Duration::from_secs(86_400)),
            Duration::from_secs(60)
        );
        assert_eq!(
            Clock::accelerated(start, 1440.0),
            Ok(c),
            "same settings, same clock"
        );
        assert_eq!(Clock::real().at(start), start);
    }

    #[test]
    fn settings_are_checked() {
        let args = ClockArgs {
            clock_speed: 60.0,
            clock_start: None,
        };
        assert!(
            Clock::from_args(&args)
                .unwrap_err()
                .contains("--clock-start is required")
        );
        assert!(
            Clock::accelerated(Timestamp::UNIX_EPOCH, 0.5)
                .unwrap_err()
                .contains("--clock-speed")
        );
        assert_eq!(Clock::from_args(&ClockArgs::default()), Ok(Clock::real()));
    }
}
