//! Types shared by several resources.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

pub use super::condition::{Condition, Text};

// A day of the week.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum DayOfWeek {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

// An update classification.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Classification {
    /// Fixes for critical, non-security bugs.
    Critical,
    /// Security fixes (a distribution's security pocket or a security advisory).
    Security,
    /// Everything else: feature updates, bug fixes, enhancements.
    Other,
}

/// The classifications installed when nothing else is said: Critical and Security.
pub fn default_classifications() -> Vec<Classification> {
    vec![Classification::Critical, Classification::Security]
}

/// A recurring maintenance window, evaluated in each VM's own time zone (`spec.timeZone` of the
/// VirtualMachine), so "03:00" means 03:00 local time on every VM, daylight saving included.
/// Installations start only inside the window, and none starts when the time left is shorter than
/// the expected duration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// Local start time, 24-hour "HH:MM". A window may run past midnight.
    #[x_kube(validation = schema::hhmm())]
    pub start: String,
    /// Length of the window, from 1h to 24h, e.g. "3h" or "90m".
    #[x_kube(validation = schema::duration_between("1h", "24h"))]
    pub duration: String,
    /// Days on which the window opens (by its start time). Empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub days_of_week: Vec<DayOfWeek>,
}
