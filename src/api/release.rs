//! What a release may contain and where its packages come from: repository snapshots and the
//! approval policy, declared with the patch policy (a profile's update management, overridable
//! per UpdateRing), and what the frozen manifest records of them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// The placeholder a snapshot URL template must contain.
pub const TIMESTAMP_PLACEHOLDER: &str = "{timestamp}";

/// CEL: an absolute http(s) URL with a host, or a file URL; no spaces. (A regular expression, not
/// `isURL`: the URL library's estimated cost is far above what a schema this size may spend.)
const URL_RULE: &str = "self.matches('^(https?://[^/\\\\s]+|file:)(/\\\\S*)?$')";
/// CEL: such a URL containing `{timestamp}`.
const TEMPLATE_RULE: &str =
    "self.contains('{timestamp}') && self.matches('^(https?://[^/\\\\s]+|file:)(/\\\\S*)?$')";

/// A repository whose dated snapshots the release installs from: the machine's own repository
/// (as its apt sources or dnf repository files name it) and the URL of its snapshot at a time.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, KubeSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRepository {
    /// The repository as the machines know it: the URI of an apt source ("http://deb.debian.org/debian")
    /// or the baseurl of a dnf repository. Sources under it (same URI, any suite) are read from
    /// the snapshot instead.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(URL_RULE).message(Message::Message("must be an absolute http, https or file URL, e.g. \"http://deb.debian.org/debian\"".into())))]
    pub repository: String,
    /// The URL of the repository's snapshot with `{timestamp}` where the time goes (UTC,
    /// `YYYYMMDDTHHMMSSZ` as Debian's and Ubuntu's snapshot services and aptly/Pulp publications
    /// name them), e.g. "https://snapshot.debian.org/archive/debian/{timestamp}/". The manifest
    /// freezes the timestamp (the release time), so every ring installs from the same state of the
    /// repository.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(TEMPLATE_RULE).message(Message::Message("must be an http, https or file URL containing {timestamp}, e.g. \"https://snapshot.debian.org/archive/debian/{timestamp}/\"".into())))]
    pub template: String,
}

impl SnapshotRepository {
    /// The snapshot's URL at a timestamp (`YYYYMMDDTHHMMSSZ`).
    pub fn at(&self, timestamp: &str) -> String {
        self.template.replace(TIMESTAMP_PLACEHOLDER, timestamp)
    }
}

/// Which updates a release approves, beyond its classifications.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, KubeSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalPolicy {
    /// An update must have been published at least this long before the release to be included,
    /// from 0s to 8760h (default 0s), e.g. "168h" (seven days, as AWS Patch Manager's "approve
    /// after"). Updates whose repository gives no publication date (apt indexes; dnf gives each
    /// advisory's issue date) are left out while this is above 0s, listed as NotYetApproved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = schema::duration_between("0s", "8760h"))]
    pub approve_after: Option<String>,
    /// When set, only packages matching one of these are included: exact names or prefixes
    /// ending in `*` ("openssl", "linux-image-*"). Packages that match none are listed as
    /// NotIncluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 128)))]
    #[x_kube(validation = Rule::new("self.all(p, p.trim().size() > 0 && p != '*')").message(Message::Message("patterns must be package names or prefixes ending in * (\"openssl\", \"linux-image-*\"), not empty or a bare *".into())))]
    pub include: Option<Vec<String>>,
    /// Packages never included, exact names or prefixes ending in `*`; an exclusion wins over
    /// `include`. Listed as Excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 128)))]
    #[x_kube(validation = Rule::new("self.all(p, p.trim().size() > 0)").message(Message::Message("patterns must be package names or prefixes ending in * (\"kernel*\"), not empty".into())))]
    pub exclude: Option<Vec<String>>,
}

impl ApprovalPolicy {
    /// This policy with each field `over` sets replacing this one's (an UpdateRing's over the
    /// profile's).
    pub fn overridden_by(&self, over: Option<&ApprovalPolicy>) -> ApprovalPolicy {
        let Some(o) = over else {
            return self.clone();
        };
        ApprovalPolicy {
            approve_after: o
                .approve_after
                .clone()
                .or_else(|| self.approve_after.clone()),
            include: o.include.clone().or_else(|| self.include.clone()),
            exclude: o.exclude.clone().or_else(|| self.exclude.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self == &ApprovalPolicy::default()
    }
}

/// The repository state an operation reads: the manifest's snapshot time and, per repository,
/// the snapshot's URL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSnapshot {
    /// The snapshot's time (UTC, `YYYYMMDDTHHMMSSZ`).
    pub timestamp: String,
    /// Each repository the machine knows that is read from its snapshot instead.
    #[serde(default)]
    pub repositories: Vec<SnapshotUrl>,
}

/// A repository and the URL it is read from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotUrl {
    /// The repository as the machine knows it.
    pub repository: String,
    /// Its snapshot's URL.
    pub url: String,
}

/// A snapshot timestamp as the templates take it: `YYYYMMDDTHHMMSSZ` in UTC.
pub fn snapshot_timestamp(t: jiff::Timestamp) -> String {
    t.strftime("%Y%m%dT%H%M%SZ").to_string()
}

// Why an update is not part of a release.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum LeftOutReason {
    /// Published after the release time (the cut-off).
    PublishedAfterRelease,
    /// Published less than the approval policy's `approveAfter` before the release, or its
    /// publication date is unknown while `approveAfter` is set.
    NotYetApproved,
    /// Matched an exclusion (the rollout's `exclude` or the approval policy's).
    Excluded,
    /// The approval policy's `include` list names it nowhere.
    NotIncluded,
    /// Of a classification the rollout does not install.
    OutsideClassifications,
}

/// An update a release leaves out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeftOutPackage {
    /// The image family whose assessments offered it.
    pub image_family: String,
    /// The package.
    pub name: String,
    /// The version offered.
    pub version: String,
    /// PublishedAfterRelease, NotYetApproved, Excluded, NotIncluded or OutsideClassifications.
    pub reason: LeftOutReason,
    /// The approval policy that left it out ("profile NAME", "profile NAME, ring NAME"); unset
    /// when the rollout itself did (classifications, its exclude list, the cut-off): then no VM
    /// gets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// When it was published, where the repository says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Time>,
}
