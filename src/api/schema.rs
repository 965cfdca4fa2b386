//! Reusable admission rules (CEL) and schema pieces for the CRDs.
//!
//! Each rule's message says what is allowed; the API server prefixes it with the field's path, so a
//! rejection reads like `spec.preferences.backup.schedule.time: Invalid value: "25:00": must be a
//! 24-hour time "HH:MM" …`.

use kube::core::{Message, Reason, Rule};
use schemars::{Schema, SchemaGenerator, json_schema};

/// CEL for a 24-hour clock time `HH:MM`.
pub fn hhmm() -> Rule {
    Rule::new("self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')")
        .message("must be a 24-hour time \"HH:MM\" between 00:00 and 23:59, e.g. \"03:30\"")
}

/// The Go duration syntax Kubernetes uses for `metav1.Duration` (no days: write 24h for a day).
const DURATION_RE: &str = "^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// CEL for a duration between `min` and `max` inclusive (both Go durations, like "1h").
pub fn duration_between(min: &str, max: &str) -> Rule {
    Rule::new(format!(
        "self.matches('{DURATION_RE}') && duration(self) >= duration('{min}') && duration(self) <= duration('{max}')"
    ))
    .message(Message::Message(format!(
        "must be a duration such as \"30m\", \"24h\" or \"144h\" (units h, m, s; write days as hours) between {min} and {max}"
    )))
}

/// A transition rule: the field cannot change once set.
pub fn immutable(what: &str) -> Rule {
    Rule::new("self == oldSelf")
        .message(Message::Message(format!("{what} is immutable once set")))
        .reason(Reason::FieldValueForbidden)
}

/// A time a guest reports: a date-time between 2000 and 2200. A guest's clock far off (or a
/// forged value such as the year 9999, beyond what the controller's time type holds) is refused
/// at admission, naming the field.
pub fn guest_time(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "format": "date-time",
        "x-kubernetes-validations": [{
            "rule": "self >= timestamp('2000-01-01T00:00:00Z') && self < timestamp('2200-01-01T00:00:00Z')",
            "message": "must be a time between 2000-01-01 and 2200-01-01 (RFC 3339, e.g. \"2026-11-10T17:00:00Z\")"
        }]
    })
}

/// A count (`3`) or percentage (`"25%"`) as the `maxUnavailable` of Deployments, with rules:
/// a count of at least 1, or a percentage from 1% to 100%.
pub fn count_or_percent(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "x-kubernetes-validations": [{
            "rule": "type(self) == int ? self >= 1 : self.matches('^(100|[1-9][0-9]?)%$')",
            "message": "must be a count of at least 1 (e.g. 5) or a percentage from 1% to 100% (e.g. \"25%\")"
        }]
    })
}

/// A Kubernetes label selector (`matchLabels` / `matchExpressions`) whose operators and values are
/// checked at admission the way built-in resources check theirs.
pub fn label_selector(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A label selector: matchLabels and matchExpressions are ANDed; an empty selector matches everything.",
        "type": "object",
        "properties": {
            "matchLabels": {
                "description": "Labels that must all be present with these values.",
                "type": "object",
                "additionalProperties": { "type": "string", "maxLength": 63 },
                "maxProperties": 64
            },
            "matchExpressions": {
                "description": "Requirements that must all hold.",
                "type": "array",
                "maxItems": 64,
                "x-kubernetes-list-type": "atomic",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": { "description": "The label key.", "type": "string", "minLength": 1, "maxLength": 317 },
                        "operator": {
                            "description": "One of In, NotIn, Exists, DoesNotExist.",
                            "type": "string",
                            "enum": ["In", "NotIn", "Exists", "DoesNotExist"]
                        },
                        "values": {
                            "description": "Values for In and NotIn (at least one); must be empty for Exists and DoesNotExist.",
                            "type": "array",
                            "maxItems": 256,
                            "items": { "type": "string", "maxLength": 63 },
                            "x-kubernetes-list-type": "atomic"
                        }
                    },
                    "x-kubernetes-validations": [
                        {
                            "rule": "self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0 : !has(self.values) || size(self.values) == 0",
                            "message": "values must be non-empty for the In and NotIn operators and empty for Exists and DoesNotExist",
                            "fieldPath": ".values"
                        }
                    ]
                }
            }
        }
    })
}
