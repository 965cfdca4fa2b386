//! Whether the watches are alive. Each supervised watch keeps a `Record` of what it delivered;
//! `judge` (pure) turns the records into the answers of `/readyz` and `/healthz`.
//!
//! A watch that fails (the API server is away, a list is refused) is not ready at once and not
//! live after `unhealthy_after`. A watch that delivers nothing for `idle` is re-established by its
//! supervisor (a fresh list, whose end is a delivery); one that still delivers nothing for
//! `unhealthy_after` more is stuck (a stalled connection, or a consumer that stopped polling it)
//! and the process is not live, so Kubernetes restarts it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::logic::duration;

/// What one watch has delivered.
#[derive(Clone, Debug)]
pub struct Record {
    /// When the watch was first started.
    pub started: Instant,
    /// The last event it delivered (a relist's end counts).
    pub last_delivered: Option<Instant>,
    /// Whether its first list has completed.
    pub listed: bool,
    /// Since when it has failed without delivering anything in between.
    pub failing_since: Option<Instant>,
    pub last_error: Option<String>,
}

/// The bounds of a healthy watch.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Silence after which a watch is re-established.
    pub idle: Duration,
    /// How long a watch may fail, or stay silent after being re-established, before the process
    /// is no longer live.
    pub unhealthy_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle: Duration::from_secs(300),
            unhealthy_after: Duration::from_secs(120),
        }
    }
}

/// The answers of `/readyz` and `/healthz`: `Err` carries the reasons.
#[derive(Debug, PartialEq)]
pub struct Verdict {
    pub ready: Result<(), String>,
    pub live: Result<(), String>,
}

/// Judge the watches at `now`.
pub fn judge<'a>(
    records: impl IntoIterator<Item = (&'a str, &'a Record)>,
    now: Instant,
    limits: Limits,
) -> Verdict {
    let mut dead = Vec::new();
    let mut unready = Vec::new();
    for (name, r) in records {
        let since = |t: Instant| duration::format(now.saturating_duration_since(t));
        if let Some(f) = r.failing_since {
            let why = r.last_error.as_deref().unwrap_or("unknown error");
            if now.saturating_duration_since(f) >= limits.unhealthy_after {
                dead.push(format!("watch {name} has failed for {}: {why}", since(f)));
            } else {
                unready.push(format!("watch {name} is failing: {why}"));
            }
            continue;
        }
        let active = r.last_delivered.unwrap_or(r.started);
        if now.saturating_duration_since(active) >= limits.idle + limits.unhealthy_after {
            dead.push(format!(
                "watch {name} has delivered nothing for {}, not even a list after being re-established",
                since(active)
            ));
        } else if !r.listed {
            unready.push(format!("watch {name} has not completed its first list"));
        }
    }
    let join = |v: &[String]| {
        if v.is_empty() {
            Ok(())
        } else {
            Err(v.join("; "))
        }
    };
    let everything: Vec<String> = dead.iter().chain(&unready).cloned().collect();
    Verdict {
        ready: join(&everything),
        live: join(&dead),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabel {
    pub watch: String,
}

/// The records of a process's watches, shared by the watches and the HTTP server.
#[derive(Clone)]
pub struct Health {
    records: Arc<Mutex<BTreeMap<&'static str, Record>>>,
    limits: Limits,
    /// `automend_watch_restarts_total{watch}`: re-establishments after silence.
    pub restarts: Family<WatchLabel, Counter>,
    /// `automend_watch_failures_total{watch}`: errors of the watch (each retried).
    pub failures: Family<WatchLabel, Counter>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(Limits::default())
    }
}

impl Health {
    pub fn new(limits: Limits) -> Health {
        Health {
            records: Arc::default(),
            limits,
            restarts: Family::default(),
            failures: Family::default(),
        }
    }

    /// A probe for the watch `name`, recorded from now on.
    pub fn probe(&self, name: &'static str) -> Probe {
        self.update(name, |_| {});
        Probe {
            name,
            idle: self.limits.idle,
            health: Some(self.clone()),
        }
    }

    pub fn verdict(&self) -> Verdict {
        let now = Instant::now();
        match self.records.lock() {
            Ok(records) => judge(records.iter().map(|(k, v)| (*k, v)), now, self.limits),
            Err(_) => Verdict {
                ready: Err("watch records are unavailable".into()),
                live: Err("watch records are unavailable".into()),
            },
        }
    }

    fn update(&self, name: &'static str, f: impl FnOnce(&mut Record)) {
        if let Ok(mut records) = self.records.lock() {
            let r = records.entry(name).or_insert_with(|| Record {
                started: Instant::now(),
                last_delivered: None,
                listed: false,
                failing_since: None,
                last_error: None,
            });
            f(r);
        }
    }
}

/// What a supervised watch reports to (nothing, for a watch outside the controller).
#[derive(Clone)]
pub struct Probe {
    name: &'static str,
    pub(super) idle: Duration,
    health: Option<Health>,
}

impl Probe {
    /// A probe that records nothing: the watch is still re-established after `idle` of silence.
    pub fn detached(name: &'static str, idle: Duration) -> Probe {
        Probe {
            name,
            idle,
            health: None,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub(super) fn delivered(&self, list_done: bool) {
        if let Some(h) = &self.health {
            h.update(self.name, |r| {
                r.last_delivered = Some(Instant::now());
                r.failing_since = None;
                r.listed |= list_done;
            });
        }
    }

    pub(super) fn failed(&self, error: &str) {
        if let Some(h) = &self.health {
            let label = WatchLabel {
                watch: self.name.into(),
            };
            h.failures.get_or_create(&label).inc();
            h.update(self.name, |r| {
                r.failing_since.get_or_insert_with(Instant::now);
                r.last_error = Some(crate::logic::text::safe(error, 300));
            });
        }
    }

    pub(super) fn restarted(&self) {
        if let Some(h) = &self.health {
            let label = WatchLabel {
                watch: self.name.into(),
            };
            h.restarts.get_or_create(&label).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(started: Instant) -> Record {
        Record {
            started,
            last_delivered: None,
            listed: false,
            failing_since: None,
            last_error: None,
        }
    }

    const LIMITS: Limits = Limits {
        idle: Duration::from_secs(300),
        unhealthy_after: Duration::from_secs(120),
    };

    #[test]
    fn a_watch_that_listed_and_delivers_is_ready_and_live() {
        let t0 = Instant::now();
        let mut r = record(t0);
        r.listed = true;
        r.last_delivered = Some(t0 + Duration::from_secs(400));
        let v = judge([("vms", &r)], t0 + Duration::from_secs(500), LIMITS);
        assert_eq!(
            v,
            Verdict {
                ready: Ok(()),
                live: Ok(())
            }
        );
    }

    #[test]
    fn before_its_first_list_a_watch_is_live_but_not_ready() {
        let t0 = Instant::now();
        let r = record(t0);
        let v = judge([("vms", &r)], t0 + Duration::from_secs(5), LIMITS);
        assert!(v.live.is_ok());
        assert!(
            v.ready
                .unwrap_err()
                .contains("vms has not completed its first list")
        );
    }

    #[test]
    fn a_failing_watch_is_unready_at_once_and_dead_after_the_bound() {
        let t0 = Instant::now();
        let mut r = record(t0);
        r.listed = true;
        r.last_delivered = Some(t0);
        r.failing_since = Some(t0 + Duration::from_secs(10));
        r.last_error = Some("connection refused".into());
        let soon = judge([("leases", &r)], t0 + Duration::from_secs(20), LIMITS);
        assert!(soon.live.is_ok());
        assert!(
            soon.ready
                .unwrap_err()
                .contains("leases is failing: connection refused")
        );
        let late = judge([("leases", &r)], t0 + Duration::from_secs(131), LIMITS);
        let why = late.live.unwrap_err();
        assert!(
            why.contains("leases has failed for 2m1s: connection refused"),
            "{why}"
        );
        assert!(late.ready.is_err());
    }

    #[test]
    fn silence_is_tolerated_for_idle_plus_the_bound_then_the_process_is_dead() {
        let t0 = Instant::now();
        let mut quiet = record(t0);
        quiet.listed = true;
        quiet.last_delivered = Some(t0);
        let mut busy = quiet.clone();
        busy.last_delivered = Some(t0 + Duration::from_secs(419));
        let at = |s| t0 + Duration::from_secs(s);
        assert!(
            judge([("vms", &quiet), ("leases", &busy)], at(419), LIMITS)
                .live
                .is_ok()
        );
        let v = judge([("vms", &quiet), ("leases", &busy)], at(420), LIMITS);
        let why = v.live.unwrap_err();
        assert!(
            why.contains("watch vms has delivered nothing for 7m"),
            "{why}"
        );
        assert!(!why.contains("leases"), "{why}");
    }

    #[test]
    fn probes_record_deliveries_failures_and_restarts() {
        let h = Health::default();
        let p = h.probe("vms");
        assert!(h.verdict().ready.is_err());
        p.delivered(true);
        assert_eq!(
            h.verdict(),
            Verdict {
                ready: Ok(()),
                live: Ok(())
            }
        );
        p.failed("410 Gone");
        assert!(h.verdict().ready.unwrap_err().contains("410 Gone"));
        p.delivered(false);
        assert!(h.verdict().ready.is_ok());
        p.restarted();
        let label = WatchLabel {
            watch: "vms".into(),
        };
        assert_eq!(h.restarts.get_or_create(&label).get(), 1);
        assert_eq!(h.failures.get_or_create(&label).get(), 1);
    }
}
