//! Reading Prometheus text expositions: the API server's `apiserver_request_total` and the
//! controller's `automend_api_requests_total` by verb and resource, and counters summed over
//! their labels. Used by the fleet bench (feature `bench`); pure, tested here.

use std::collections::BTreeMap;

/// Requests by (verb, resource[/subresource]).
pub type Requests = BTreeMap<(String, String), f64>;

/// The value of a label in a Prometheus sample line's label set.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let start = labels
        .split(',')
        .find_map(|kv| kv.trim().strip_prefix(key.as_str()))?;
    start.strip_suffix('"').or_else(|| start.split('"').next())
}

/// `(labels, value)` of every sample of `metric` in a Prometheus text exposition.
fn samples<'a>(text: &'a str, metric: &str) -> Vec<(&'a str, f64)> {
    let prefix = format!("{metric}{{");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// The API server's `apiserver_request_total`, summed over codes and scopes. Its verbs are
/// upper case (GET, LIST, WATCH, POST, PUT, PATCH, APPLY, DELETE); named here as kubectl does.
pub fn apiserver_requests(text: &str) -> Requests {
    let mut out = Requests::new();
    for (labels, v) in samples(text, "apiserver_request_total") {
        let verb = match label(labels, "verb").unwrap_or("-") {
            "POST" => "create".to_string(),
            "PUT" => "update".to_string(),
            other => other.to_ascii_lowercase(),
        };
        // A non-resource URL (`/readyz`, `/openapi/v3`) comes as the subresource of no resource.
        let resource = match (
            label(labels, "resource").unwrap_or_default(),
            label(labels, "subresource").unwrap_or_default(),
        ) {
            ("", "") => "-".to_string(),
            ("", url) => url.to_string(),
            (r, "") => r.to_string(),
            (r, sub) => format!("{r}/{sub}"),
        };
        *out.entry((verb, resource)).or_default() += v;
    }
    out
}

/// The controller's `automend_api_requests_total{verb,resource}`.
pub fn controller_requests(text: &str) -> Requests {
    let mut out = Requests::new();
    for (labels, v) in samples(text, "automend_api_requests_total") {
        let key = (
            label(labels, "verb").unwrap_or("-").to_string(),
            label(labels, "resource").unwrap_or("-").to_string(),
        );
        *out.entry(key).or_default() += v;
    }
    out
}

/// A counter of the controller summed over its labels (`automend_reconciles_total`, …).
pub fn counter(text: &str, metric: &str) -> f64 {
    // A fold from 0.0: an empty `sum()` of floats is -0.0, printed "-0.00".
    samples(text, metric).iter().fold(0.0, |a, (_, v)| a + v)
}

/// `after - before`, keeping what changed.
pub fn delta(before: &Requests, after: &Requests) -> Requests {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

pub fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "apply" | "delete" | "deletecollection"
    )
}

pub fn writes(r: &Requests) -> f64 {
    r.iter()
        .filter(|((verb, _), _)| is_write(verb))
        .fold(0.0, |a, (_, v)| a + v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const API: &str = r#"# HELP apiserver_request_total Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="automend.io",resource="virtualmachines",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 12
apiserver_request_total{code="409",component="apiserver",dry_run="",group="automend.io",resource="virtualmachines",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 3
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="serviceaccounts",scope="resource",subresource="token",verb="POST",version="v1"} 4
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="",scope="",subresource="/readyz",verb="GET",version=""} 7
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 2
"#;

    #[test]
    fn api_server_requests_are_summed_by_verb_and_resource() {
        let r = apiserver_requests(API);
        let get = |v: &str, res: &str| r.get(&(v.to_string(), res.to_string())).copied();
        assert_eq!(get("apply", "virtualmachines/status"), Some(15.0));
        assert_eq!(get("create", "serviceaccounts/token"), Some(4.0));
        assert_eq!(get("update", "leases"), Some(2.0));
        assert_eq!(get("get", "/readyz"), Some(7.0));
        assert_eq!(r.len(), 4, "{r:?}");
        assert_eq!(writes(&r), 21.0);
        assert!(
            writes(&Requests::new()).is_sign_positive(),
            "0.00, not -0.00"
        );
    }

    #[test]
    fn controller_counters_and_deltas() {
        let text = "automend_api_requests_total{verb=\"create\",resource=\"roles\"} 5\n\
                    automend_api_requests_total{verb=\"watch\",resource=\"leases\"} 2\n\
                    automend_reconciles_total{controller=\"virtualmachine\"} 9\n\
                    automend_reconciles_total{controller=\"patchrollout\"} 1\n";
        let now = controller_requests(text);
        assert_eq!(counter(text, "automend_reconciles_total"), 10.0);
        assert_eq!(writes(&now), 5.0);
        let before: Requests = [(("create".to_string(), "roles".to_string()), 3.0)].into();
        let d = delta(&before, &now);
        assert_eq!(
            d.get(&("create".to_string(), "roles".to_string())),
            Some(&2.0)
        );
        assert_eq!(
            d.get(&("watch".to_string(), "leases".to_string())),
            Some(&2.0)
        );
    }
}
