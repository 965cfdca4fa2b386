//! The guest's heartbeat, judged on the controller's clock. A guest renews its Lease with a
//! `renewTime` from its own clock, which may be wrong (or forged); the controller counts a
//! heartbeat when it *sees* `renewTime` change and times it with its own clock, as the node
//! lifecycle controller does with kubelet Leases. The difference between the guest's claim and
//! the controller's sight is the guest's clock skew, reported when it is larger than
//! `MAX_CLOCK_SKEW`.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::Heartbeat;
use crate::api::VirtualMachineStatus;

/// A guest clock further than this from the controller's is reported as skewed.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(120);
/// A silent guest whose credential expired: it must be enrolled again.
pub const CREDENTIAL_EXPIRED: &str = "CredentialExpired";
/// A silent guest while the API server refuses every guest (`Inputs::guests_refused`).
pub const GUESTS_REFUSED: &str = "GuestsRefused";

/// The controller's record of a guest's last heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The Lease's `renewTime`, as the guest wrote it.
    pub renew: Timestamp,
    /// When the controller counts the heartbeat (its own clock).
    pub at: Timestamp,
    /// Guest clock minus controller clock, when known.
    pub skew: Option<SignedDuration>,
}

/// The record after the controller sees a Lease with `renew` at `now`; `None` keeps `previous`
/// (nothing renewed, or the same renewal seen again, e.g. in a relist).
pub fn observe(
    previous: Option<&Observed>,
    renew: Option<Timestamp>,
    now: Timestamp,
) -> Option<Observed> {
    let renew = renew?;
    match previous {
        Some(p) if p.renew == renew => None,
        // A renewal seen as it happens: timed now; the difference is the guest's skew.
        Some(_) => Some(Observed {
            renew,
            at: now,
            skew: Some(renew.duration_since(now)),
        }),
        // First sight (a controller start lists every Lease): a renewal in the past may be old,
        // so it counts from when the guest says (a dead guest stays dead); one in the future
        // cannot be, so it counts from now and the guest's clock is known to be ahead.
        None if renew <= now => Some(Observed {
            renew,
            at: renew,
            skew: None,
        }),
        None => Some(Observed {
            renew,
            at: now,
            skew: Some(renew.duration_since(now)),
        }),
    }
}

/// The heartbeat at `now`: alive until `grace` after the last counted renewal.
pub fn judge(observed: Option<&Observed>, now: Timestamp, grace: Duration) -> Heartbeat {
    match observed {
        Some(o) if crate::logic::duration::add(o.at, grace) > now => Heartbeat::Alive {
            renewed: o.at,
            clock_skew: o.skew.filter(|s| s.unsigned_abs() > MAX_CLOCK_SKEW),
        },
        o => Heartbeat::Missing {
            last: o.map(|o| o.at),
        },
    }
}

/// "3h0m0s ahead of" / "5m0s behind" the controller's clock.
pub fn describe_skew(skew: SignedDuration) -> String {
    let d = crate::logic::duration::format(skew.unsigned_abs());
    if skew.is_negative() {
        format!("{d} behind")
    } else {
        format!("{d} ahead of")
    }
}

/// "credential expired …" when the guest's last reported credential expiry has passed: a silent
/// guest then cannot come back by itself.
pub fn credential_expired(old: &VirtualMachineStatus, now: Timestamp) -> Option<String> {
    let at = old.guest.as_ref()?.credential_expires_at.as_ref()?;
    (now >= at.0).then(|| {
        format!(
            "credential expired at {}; re-enroll the machine (automend enroll create, then put the token on the machine): it gets this VM back",
            at.0
        )
    })
}

/// The Heartbeat condition of a silent guest (reason, message), last heard at `last`: its
/// credential expired, or every guest refused by the API server (`refused`, why), or else the
/// VM not running.
pub fn silent(
    last: Option<Timestamp>,
    grace: Duration,
    expired: Option<String>,
    refused: Option<&str>,
) -> (&'static str, String) {
    let msg = match last {
        Some(t) => format!(
            "no heartbeat since {t} (grace period {}): the VM is not running",
            crate::logic::duration::format(grace)
        ),
        None => {
            "the guest has never renewed its Lease: the VM is not running or has no agent".into()
        }
    };
    match (expired, refused) {
        (Some(expired), _) => (CREDENTIAL_EXPIRED, format!("{msg}; {expired}")),
        (None, Some(why)) => {
            let silent = match last {
                Some(t) => format!("no heartbeat since {t}"),
                None => "the guest has never renewed its Lease".into(),
            };
            (GUESTS_REFUSED, format!("{silent}: {why}"))
        }
        (None, None) => ("NoHeartbeat", msg),
    }
}

/// The VM's verdict while its guest is silent (reason, message), when neither a reboot nor an
/// expired credential explains it.
pub fn pending(refused: Option<&str>) -> (&'static str, String) {
    match refused {
        Some(why) => (
            GUESTS_REFUSED,
            format!(
                "no heartbeat: {why}; onboarding or remediation continues when the guest is heard again"
            ),
        ),
        None => (
            "NoHeartbeat",
            "the VM is not running (no heartbeat); onboarding or remediation continues when it runs"
                .into(),
        ),
    }
}

/// "rebooting since …" when the guest announced a reboot for an installation it has not
/// finished.
pub fn rebooting(old: &VirtualMachineStatus) -> Option<String> {
    let i = old.guest.as_ref()?.installation.as_ref()?;
    let since = i.reboot_started_at.as_ref()?;
    (i.status == crate::api::OperationStatus::InProgress).then(|| {
        format!(
            "rebooting since {} (rollout {}, wave {}): the heartbeat resumes when the machine is back",
            since.0,
            crate::logic::text::safe(&i.rollout, 64),
            i.wave
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }
    const GRACE: Duration = Duration::from_secs(300);

    #[test]
    fn a_renewal_counts_from_when_the_controller_sees_it() {
        let first = observe(None, Some(t(0)), t(1)).expect("first");
        assert_eq!(first.at, t(0));
        let again = observe(Some(&first), Some(t(30)), t(31)).expect("renewed");
        assert_eq!(again.at, t(31));
        assert_eq!(again.skew, Some(SignedDuration::from_secs(-1)));
        assert_eq!(
            observe(Some(&again), Some(t(30)), t(90)),
            None,
            "a relist is not a renewal"
        );
        assert_eq!(observe(Some(&again), None, t(90)), None);
        assert!(matches!(
            judge(Some(&again), t(300), GRACE),
            Heartbeat::Alive {
                clock_skew: None,
                ..
            }
        ));
        assert_eq!(
            judge(Some(&again), t(331), GRACE),
            Heartbeat::Missing { last: Some(t(31)) }
        );
    }

    #[test]
    fn a_guest_clock_in_the_future_does_not_keep_a_dead_vm_alive() {
        // The guest claims a renewal a year ahead, then stops.
        let year = 365 * 24 * 3600;
        let first = observe(None, Some(t(year)), t(0)).expect("first");
        assert_eq!(first.at, t(0));
        let h = judge(Some(&first), t(10), GRACE);
        let Heartbeat::Alive {
            clock_skew: Some(skew),
            ..
        } = h
        else {
            panic!("alive and skewed: {h:?}");
        };
        assert_eq!(describe_skew(skew), "8760h0m0s ahead of");
        // On the old code, alive until the claimed time plus grace: a year.
        assert!(matches!(
            judge(Some(&first), t(301), GRACE),
            Heartbeat::Missing { .. }
        ));
    }

    #[test]
    fn a_lagging_guest_clock_is_reported_but_its_renewals_count() {
        let first = observe(None, Some(t(-3600)), t(0)).expect("first");
        assert!(matches!(
            judge(Some(&first), t(0), GRACE),
            Heartbeat::Missing { .. }
        ));
        let renewed = observe(Some(&first), Some(t(-3590)), t(10)).expect("renewed");
        let h = judge(Some(&renewed), t(20), GRACE);
        let Heartbeat::Alive {
            clock_skew: Some(skew),
            renewed: at,
        } = h
        else {
            panic!("alive and skewed: {h:?}");
        };
        assert_eq!(at, t(10));
        assert_eq!(describe_skew(skew), "1h0m0s behind");
    }

    #[test]
    fn a_small_skew_is_not_reported() {
        let first = observe(None, Some(t(0)), t(0)).expect("first");
        let renewed = observe(Some(&first), Some(t(100)), t(10)).expect("renewed");
        assert!(matches!(
            judge(Some(&renewed), t(20), GRACE),
            Heartbeat::Alive {
                clock_skew: None,
                ..
            }
        ));
    }
}
