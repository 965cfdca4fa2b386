//! The guest authorizer's decision: given a SubjectAccessReview the API server sends (its
//! authorization webhook), whether the request is a guest acting on its own VM within
//! `guest_rules`. A pure function of the review: the user name says which VM's guest is asking
//! (`system:serviceaccount:<namespace>:automend-guest-<vm>`), and the rules are the guest Role's.
//!
//! Why it exists (issue 17): with one Role and RoleBinding per VM, the API server's RBAC
//! authorizer scans every RoleBinding of the namespace on each guest request, so a guest's request
//! costs more the larger the fleet. Answering from the request alone costs the same at any size and
//! needs no per-VM RBAC objects. It never denies: anything it does not allow is left to the next
//! authorizer (RBAC), so a guest's other requests are denied exactly as before.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use k8s_openapi::api::rbac::v1::PolicyRule;

use super::{GUEST_PREFIX, guest_rules};

/// The group every ServiceAccount token carries.
const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";

/// The answer to one review.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A guest acting on its own VM within its rules.
    Allow { namespace: String, vm: String },
    /// Not ours to allow: the next authorizer decides.
    NoOpinion(&'static str),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// The guest (namespace, VM) a user name belongs to, if it is a guest ServiceAccount.
pub fn guest_of(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (namespace, account) = rest.split_once(':')?;
    let vm = account.strip_prefix(GUEST_PREFIX)?;
    (!namespace.is_empty() && !vm.is_empty()).then_some((namespace, vm))
}

/// Whether RBAC would allow `attrs` under `rule` (exact group, resource[/subresource], name and
/// verb; the guest rules have no wildcards).
fn rule_allows(rule: &PolicyRule, attrs: &ResourceAttributes) -> bool {
    let s = |o: &Option<String>| o.as_deref().unwrap_or_default().to_string();
    let resource = match attrs.subresource.as_deref() {
        None | Some("") => s(&attrs.resource),
        Some(sub) => format!("{}/{sub}", s(&attrs.resource)),
    };
    let has = |list: &Option<Vec<String>>, v: &str| list.iter().flatten().any(|x| x == v);
    has(&rule.api_groups, &s(&attrs.group))
        && has(&rule.resources, &resource)
        && has(&rule.resource_names, &s(&attrs.name))
        && rule.verbs.iter().any(|v| *v == s(&attrs.verb))
}

/// Decide one review. `scope`: the only namespace this controller manages, if limited to one.
pub fn decide(spec: &SubjectAccessReviewSpec, scope: Option<&str>) -> Decision {
    let Some((namespace, vm)) = spec.user.as_deref().and_then(guest_of) else {
        return Decision::NoOpinion("not a guest ServiceAccount");
    };
    if !spec
        .groups
        .iter()
        .flatten()
        .any(|g| g == SERVICE_ACCOUNTS_GROUP)
    {
        return Decision::NoOpinion("not authenticated as a ServiceAccount");
    }
    if scope.is_some_and(|s| s != namespace) {
        return Decision::NoOpinion("a namespace this controller does not manage");
    }
    let Some(attrs) = &spec.resource_attributes else {
        return Decision::NoOpinion("not a resource request");
    };
    if attrs.namespace.as_deref() != Some(namespace) {
        return Decision::NoOpinion("outside the guest's namespace");
    }
    if guest_rules(vm).iter().any(|r| rule_allows(r, attrs)) {
        Decision::Allow {
            namespace: namespace.to_string(),
            vm: vm.to_string(),
        }
    } else {
        Decision::NoOpinion("not the guest's own VirtualMachine, status, Lease or token")
    }
}

/// The review to send back (its kind and version are the request's: authorization.k8s.io/v1).
pub fn answer(decision: &Decision) -> SubjectAccessReview {
    let reason = match decision {
        Decision::Allow { namespace, vm } => {
            format!("automend: the guest of VirtualMachine {namespace}/{vm} acting on its own")
        }
        Decision::NoOpinion(why) => format!("automend: no opinion ({why})"),
    };
    SubjectAccessReview {
        metadata: Default::default(),
        spec: Default::default(),
        status: Some(SubjectAccessReviewStatus {
            allowed: decision.allowed(),
            denied: None,
            evaluation_error: None,
            reason: Some(reason),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(
        user: &str,
        ns: &str,
        verb: &str,
        group: &str,
        resource: &str,
        name: &str,
    ) -> SubjectAccessReviewSpec {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s.to_string())),
            None => (resource, None),
        };
        SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.into()),
                verb: Some(verb.into()),
                group: Some(group.into()),
                version: Some("v1".into()),
                resource: Some(resource.into()),
                subresource,
                name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const GUEST_A: &str = "system:serviceaccount:fleet:automend-guest-a";

    #[test]
    fn a_guest_may_do_what_its_role_allows_on_its_own_vm() {
        for (verb, group, resource, name) in [
            ("get", "automend.io", "virtualmachines", "a"),
            ("watch", "automend.io", "virtualmachines", "a"),
            ("list", "automend.io", "virtualmachines", "a"),
            ("update", "automend.io", "virtualmachines/status", "a"),
            ("patch", "automend.io", "virtualmachines/status", "a"),
            ("get", "coordination.k8s.io", "leases", "a"),
            ("update", "coordination.k8s.io", "leases", "a"),
            ("create", "", "serviceaccounts/token", "automend-guest-a"),
        ] {
            let d = decide(&review(GUEST_A, "fleet", verb, group, resource, name), None);
            assert_eq!(
                d,
                Decision::Allow {
                    namespace: "fleet".into(),
                    vm: "a".into()
                },
                "{verb} {resource} {name}"
            );
        }
    }

    /// The denials the e2e suite asserts for RBAC hold here too: the authorizer has no opinion,
    /// so RBAC (with no binding for the guest) denies.
    #[test]
    fn anything_else_is_left_to_the_next_authorizer() {
        for (user, ns, verb, group, resource, name) in [
            // another VM, its status, its Lease, its token
            (
                GUEST_A,
                "fleet",
                "get",
                "automend.io",
                "virtualmachines",
                "b",
            ),
            (
                GUEST_A,
                "fleet",
                "patch",
                "automend.io",
                "virtualmachines/status",
                "b",
            ),
            (
                GUEST_A,
                "fleet",
                "update",
                "coordination.k8s.io",
                "leases",
                "b",
            ),
            (
                GUEST_A,
                "fleet",
                "create",
                "",
                "serviceaccounts/token",
                "automend-guest-b",
            ),
            // every VM (a list without a name), its own spec, deleting itself
            (
                GUEST_A,
                "fleet",
                "list",
                "automend.io",
                "virtualmachines",
                "",
            ),
            (
                GUEST_A,
                "fleet",
                "update",
                "automend.io",
                "virtualmachines",
                "a",
            ),
            (
                GUEST_A,
                "fleet",
                "patch",
                "automend.io",
                "virtualmachines",
                "a",
            ),
            (
                GUEST_A,
                "fleet",
                "delete",
                "automend.io",
                "virtualmachines",
                "a",
            ),
            (
                GUEST_A,
                "fleet",
                "delete",
                "coordination.k8s.io",
                "leases",
                "a",
            ),
            (
                GUEST_A,
                "fleet",
                "create",
                "coordination.k8s.io",
                "leases",
                "",
            ),
            // its own name in another namespace, another group, a wildcard
            (
                GUEST_A,
                "other",
                "get",
                "automend.io",
                "virtualmachines",
                "a",
            ),
            (GUEST_A, "fleet", "get", "", "virtualmachines", "a"),
            (GUEST_A, "fleet", "get", "automend.io", "*", "a"),
            (GUEST_A, "fleet", "*", "automend.io", "virtualmachines", "a"),
            (GUEST_A, "fleet", "get", "", "secrets", "a"),
            // not a guest: another ServiceAccount, a user named like a VM
            (
                "system:serviceaccount:fleet:default",
                "fleet",
                "get",
                "automend.io",
                "virtualmachines",
                "a",
            ),
            (
                "system:serviceaccount:fleet:automend-guest-",
                "fleet",
                "get",
                "automend.io",
                "virtualmachines",
                "",
            ),
            (
                "automend-guest-a",
                "fleet",
                "get",
                "automend.io",
                "virtualmachines",
                "a",
            ),
        ] {
            let d = decide(&review(user, ns, verb, group, resource, name), None);
            assert!(
                !d.allowed(),
                "{user} {verb} {group} {resource} {name} in {ns}: {d:?}"
            );
        }
    }

    #[test]
    fn only_service_account_credentials_and_managed_namespaces_count() {
        let mut r = review(
            GUEST_A,
            "fleet",
            "get",
            "automend.io",
            "virtualmachines",
            "a",
        );
        assert!(decide(&r, Some("fleet")).allowed());
        assert_eq!(
            decide(&r, Some("elsewhere")),
            Decision::NoOpinion("a namespace this controller does not manage")
        );
        // A client certificate naming itself like a guest is not a ServiceAccount token.
        r.groups = Some(vec!["system:authenticated".into()]);
        assert!(!decide(&r, None).allowed());
        r.groups = None;
        assert!(!decide(&r, None).allowed());
        // A non-resource request (discovery) is RBAC's to answer.
        let mut n = review(GUEST_A, "fleet", "get", "", "", "");
        n.resource_attributes = None;
        assert_eq!(
            decide(&n, None),
            Decision::NoOpinion("not a resource request")
        );
    }

    #[test]
    fn guest_names_parse_strictly() {
        assert_eq!(guest_of(GUEST_A), Some(("fleet", "a")));
        assert_eq!(
            guest_of("system:serviceaccount:fleet:automend-guest-web-1"),
            Some(("fleet", "web-1"))
        );
        assert_eq!(guest_of("system:serviceaccount::automend-guest-a"), None);
        assert_eq!(guest_of("system:serviceaccount:fleet:other"), None);
        assert_eq!(guest_of("system:serviceaccounts:fleet"), None);
        assert_eq!(guest_of("admin"), None);
    }

    #[test]
    fn the_answer_carries_the_decision() {
        let spec = review(
            GUEST_A,
            "fleet",
            "get",
            "automend.io",
            "virtualmachines",
            "a",
        );
        let yes = answer(&decide(&spec, None));
        let status = yes.status.expect("status");
        assert!(status.allowed);
        assert_eq!(status.denied, None);
        let json = serde_json::to_value(answer(&Decision::NoOpinion("x"))).expect("json");
        assert_eq!(json["apiVersion"], "authorization.k8s.io/v1");
        assert_eq!(json["kind"], "SubjectAccessReview");
        assert_eq!(json["status"]["allowed"], false);
        assert!(json["status"].get("denied").is_none());
    }
}
