//! Status conditions: `metav1.Condition` on the wire and in the CRDs, with shared text in memory.
//!
//! The controller caches every VM, and a VM carries five conditions whose type, status, reason and
//! message are, VM after VM, the same few sentences ("the guest has never renewed its Lease…").
//! As `String`s they were twenty allocations and ~2 KB per VM (issue 17: controller memory);
//! as `Text` every distinct string is held once in the process.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One aspect of a resource's state: the fields and the schema of `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// When the status last changed.
    pub last_transition_time: Time,
    /// For people: what the condition means now.
    #[serde(default)]
    pub message: Text,
    /// The `metadata.generation` the condition was set from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// CamelCase reason of the last transition.
    #[serde(default)]
    pub reason: Text,
    /// True, False or Unknown.
    #[serde(default)]
    pub status: Text,
    /// The condition's type, CamelCase.
    #[serde(default, rename = "type")]
    pub type_: Text,
}

impl schemars::JsonSchema for Condition {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        <k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as schemars::JsonSchema>::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as schemars::JsonSchema>::json_schema(generator)
    }
}

/// An immutable string held once per process however many objects carry it. One pointer wide
/// (`Arc<String>` rather than `Arc<str>`): a VM carries about thirty of them.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(Arc<String>);

/// Every `Text` in use; a string no `Text` refers to any more is swept when the set has doubled
/// since the last sweep.
#[derive(Default)]
struct Table {
    set: HashSet<Text>,
    after_sweep: usize,
}

static TEXTS: LazyLock<Mutex<Table>> = LazyLock::new(Default::default);

impl Text {
    pub fn new(s: &str) -> Text {
        let Ok(mut t) = TEXTS.lock() else {
            return Text(Arc::new(s.to_string()));
        };
        if let Some(held) = t.set.get(s) {
            return held.clone();
        }
        let new = Text(Arc::new(s.to_string()));
        t.set.insert(new.clone());
        if t.set.len() > 2 * t.after_sweep.max(256) {
            t.set.retain(|s| Arc::strong_count(&s.0) > 1);
            t.after_sweep = t.set.len();
        }
        new
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl schemars::JsonSchema for Text {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        String::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        String::json_schema(generator)
    }
}

impl Default for Text {
    fn default() -> Text {
        Text::new("")
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::new(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text::new(&s)
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text::new(s)
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.as_str().to_string()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Text, E> {
                Ok(Text::new(s))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_are_one_copy_and_read_as_strings() {
        let a: Text = serde_json::from_str("\"the guest has never renewed its Lease\"").expect("a");
        let b = Text::from(String::from("the guest has never renewed its Lease"));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, "the guest has never renewed its Lease");
        assert_eq!(
            serde_json::to_string(&b).expect("json"),
            "\"the guest has never renewed its Lease\""
        );
        assert!(a.starts_with("the guest"));
    }

    #[test]
    fn strings_no_one_holds_are_swept() {
        let kept = Text::new("kept while held");
        for n in 0..2000 {
            drop(Text::new(&format!("once-{n}")));
        }
        let len = TEXTS.lock().map(|t| t.set.len()).unwrap_or_default();
        // Other tests hold a few; the 2,000 dropped ones are not all kept.
        assert!(len < 1000, "{len} strings held");
        assert!(Arc::ptr_eq(&kept.0, &Text::new("kept while held").0));
    }

    #[test]
    fn a_condition_reads_and_writes_as_metav1_condition() {
        let json = serde_json::json!({
            "lastTransitionTime": "2026-11-24T03:43:09Z",
            "message": "ConfigurationProfile bench found",
            "observedGeneration": 1,
            "reason": "Resolved",
            "status": "True",
            "type": "ProfileResolved",
        });
        let c: Condition = serde_json::from_value(json.clone()).expect("condition");
        assert_eq!(c.type_, "ProfileResolved");
        assert_eq!(serde_json::to_value(&c).expect("json"), json);
        let k: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition =
            serde_json::from_value(json.clone()).expect("metav1");
        assert_eq!(serde_json::to_value(&k).expect("json"), json);
        // As lenient as metav1.Condition: only lastTransitionTime is required.
        let sparse: Condition = serde_json::from_value(
            serde_json::json!({"lastTransitionTime": "2026-11-24T03:43:09Z"}),
        )
        .expect("sparse");
        assert_eq!(sparse.message, "");
        assert!(serde_json::from_value::<Condition>(serde_json::json!({"type": "Ready"})).is_err());
    }
}
