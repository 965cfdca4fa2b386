//! The Helm chart against a real API server: lint, values schema, install, and Pod Security
//! `restricted` compliance checked by the API server itself.

mod support;

use serde_json::Value;
use support::{TestNamespace, cluster};

const CHART: &str = "charts/automend";

/// `helm template` renders for this server's version (offline it would assume an old default).
fn server_version(c: &support::Cluster) -> String {
    let v: Value = serde_json::from_str(&c.kubectl_ok(&["version", "-o", "json"]))
        .expect("kubectl version json");
    v["serverVersion"]["gitVersion"]
        .as_str()
        .expect("server gitVersion")
        .to_string()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn chart_lints_clean() {
    let out = cluster().helm(&["lint", "--strict", CHART]);
    assert!(out.status.success(), "helm lint failed:\n{}", text(&out));
}

#[test]
fn values_schema_rejects_bad_values_naming_them() {
    let c = cluster();
    let version = server_version(c);
    let ok = c.helm(&["template", "x", CHART, "--kube-version", &version]);
    assert!(
        ok.status.success(),
        "default values do not render:\n{}",
        text(&ok)
    );
    for (set, field) in [
        ("replicaCount=0", "replicaCount"),
        ("controller.logFormat=xml", "logFormat"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("unknownKey=1", "unknownKey"),
        ("guestAuthorization.mode=ldap", "mode"),
        ("guestAuthorization.clusterIP=10.96.0", "clusterIP"),
        ("guestAuthorization.recheckEvery=often", "recheckEvery"),
    ] {
        let out = c.helm(&[
            "template",
            "x",
            CHART,
            "--kube-version",
            &version,
            "--set",
            set,
        ]);
        let msg = text(&out);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            msg.contains("values don't meet the specifications of the schema"),
            "{msg}"
        );
        assert!(
            msg.contains(field),
            "--set {set}: the error does not name {field}:\n{msg}"
        );
    }
}

#[test]
fn guest_authorization_webhook_mode_serves_the_authorizer() {
    let c = cluster();
    let version = server_version(c);
    let template = |sets: &[&str]| {
        let mut args = vec!["template", "x", CHART, "--kube-version", &version];
        for s in sets {
            args.extend(["--set", s]);
        }
        c.helm(&args)
    };
    // By default: RBAC per VM, no authorizer.
    let plain = text(&template(&[]));
    assert!(plain.contains("--guest-authorization=rbac"), "{plain}");
    assert!(!plain.contains("guest-authorizer"), "{plain}");
    assert!(!plain.contains("subjectaccessreviews"), "{plain}");
    // Webhook mode without a certificate: refused, naming the value.
    let out = template(&["guestAuthorization.mode=webhook"]);
    let msg = text(&out);
    assert!(
        !out.status.success(),
        "webhook mode without tlsSecret rendered"
    );
    assert!(msg.contains("guestAuthorization.tlsSecret"), "{msg}");
    // With one: the flags, the mounted Secret, the port, the Service the API server calls, and
    // the one permission the start-up check needs.
    let out = template(&[
        "guestAuthorization.mode=webhook",
        "guestAuthorization.tlsSecret=authorizer-tls",
        "guestAuthorization.port=9443",
    ]);
    let r = text(&out);
    assert!(out.status.success(), "{r}");
    for want in [
        "--guest-authorization=webhook",
        "--authorizer-addr=0.0.0.0:9443",
        "--authorizer-cert=/etc/automend/authorizer/tls.crt",
        "--authorizer-key=/etc/automend/authorizer/tls.key",
        "secretName: authorizer-tls",
        "containerPort: 9443",
        "name: x-automend-guest-authorizer",
        "targetPort: authorizer",
        "resources: [\"subjectaccessreviews\"]",
        "--authorizer-recheck-every=30s",
    ] {
        assert!(r.contains(want), "missing {want:?} in:\n{r}");
    }
    assert!(
        !r.contains("clusterIP:"),
        "assigned by the cluster unless set: {r}"
    );
    // A fixed address for the API server's kubeconfig, and another recheck interval.
    let out = template(&[
        "guestAuthorization.mode=webhook",
        "guestAuthorization.tlsSecret=authorizer-tls",
        "guestAuthorization.clusterIP=10.96.255.200",
        "guestAuthorization.recheckEvery=1m",
    ]);
    let r = text(&out);
    assert!(out.status.success(), "{r}");
    for want in ["clusterIP: 10.96.255.200", "--authorizer-recheck-every=1m"] {
        assert!(r.contains(want), "missing {want:?} in:\n{r}");
    }
}

#[test]
fn image_catalog_value_replaces_the_built_in_catalog() {
    let c = cluster();
    let version = server_version(c);
    let out = c.helm(&[
        "template",
        "x",
        CHART,
        "--kube-version",
        &version,
        "--set-json",
        r#"imageCatalog=[{"publisher":"Example","offer":"Custom","sku":"v1*","os":"Linux","automaticByPlatform":true}]"#,
    ]);
    let rendered = text(&out);
    assert!(out.status.success(), "{rendered}");
    assert!(
        rendered.contains("--image-catalog=/etc/automend/catalog/images.yaml"),
        "{rendered}"
    );
    assert!(
        rendered.contains("name: x-automend-image-catalog"),
        "{rendered}"
    );
    // The ConfigMap holds a catalog the controller parses.
    let start = rendered.find("images.yaml: |").expect("catalog data");
    let body: String = rendered[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.get(4..).unwrap_or_default()))
        .collect();
    let catalog = automend::logic::catalog::ImageCatalog::from_yaml(&body)
        .expect("the rendered catalog parses");
    assert_eq!(catalog.images.len(), 1);
    assert_eq!(catalog.images[0].publisher, "Example");
    let bad = c.helm(&[
        "template",
        "x",
        CHART,
        "--kube-version",
        &version,
        "--set-json",
        r#"imageCatalog=[{"publisher":"Example"}]"#,
    ]);
    assert!(
        !bad.status.success(),
        "an entry without offer/sku/os was accepted"
    );
    // By default the chart publishes the built-in catalog, labelled for `kubectl automend catalog`.
    let plain = text(&c.helm(&["template", "x", CHART, "--kube-version", &version]));
    assert!(plain.contains("--image-catalog"), "{plain}");
    assert!(
        plain.contains("automend.io/image-catalog: \"true\""),
        "{plain}"
    );
    // An empty list: no ConfigMap and no flag, the controller's built-in catalog.
    let empty = text(&c.helm(&[
        "template",
        "x",
        CHART,
        "--kube-version",
        &version,
        "--set-json",
        "imageCatalog=[]",
    ]));
    assert!(!empty.contains("--image-catalog"), "{empty}");
}

#[tokio::test]
async fn helm_install_creates_the_controller_and_default_profiles() {
    let c = cluster();
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "helm").await;
    let release = format!("am-{}", std::process::id());
    // --take-ownership: when this suite shares a cluster (KUBECONFIG) with one that applied
    // examples/profiles.yaml, the default profiles already exist outside any release.
    let out = c.helm(&[
        "install",
        &release,
        CHART,
        "-n",
        &ns.name,
        "--take-ownership",
        "--set",
        "image.tag=test",
    ]);
    assert!(out.status.success(), "helm install failed:\n{}", text(&out));
    assert!(text(&out).contains("STATUS: deployed"), "{}", text(&out));

    let deploy: Value = serde_json::from_str(&c.kubectl_ok(&[
        "get",
        "deployment",
        "-n",
        &ns.name,
        &format!("{release}-automend-controller"),
        "-o",
        "json",
    ]))
    .expect("deployment json");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--leader-elect=true"), "{args}");

    for name in ["production", "dev-test"] {
        let keep = c.kubectl_ok(&[
            "get",
            "configurationprofile",
            name,
            "-o",
            "jsonpath={.metadata.annotations.helm\\.sh/resource-policy}",
        ]);
        assert_eq!(keep, "keep", "profile {name} must survive uninstall");
    }
    for kind in [
        "serviceaccount",
        "service",
        "poddisruptionbudget",
        "role",
        "rolebinding",
    ] {
        let listed = c.kubectl_ok(&[
            "get",
            kind,
            "-n",
            &ns.name,
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "name",
        ]);
        assert!(!listed.trim().is_empty(), "no {kind} installed");
    }
    // Least privilege: no wildcard anywhere in the controller's rules.
    let role = c.kubectl_ok(&[
        "get",
        "clusterrole",
        &format!("{release}-automend-controller"),
        "-o",
        "json",
    ]);
    let role: Value = serde_json::from_str(&role).expect("clusterrole json");
    for rule in role["rules"].as_array().expect("rules") {
        for key in ["apiGroups", "resources", "verbs"] {
            for v in rule[key].as_array().expect("rule lists") {
                assert_ne!(v, "*", "wildcard in {key}: {rule}");
            }
        }
    }

    let out = c.helm(&["uninstall", &release, "-n", &ns.name]);
    assert!(
        out.status.success(),
        "helm uninstall failed:\n{}",
        text(&out)
    );
    c.kubectl_ok(&["get", "configurationprofile", "production"]);
    let _ = c.kubectl(&[
        "delete",
        "clusterrole,clusterrolebinding",
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
    ]);
    ns.delete().await;
}

#[tokio::test]
async fn rendered_chart_passes_restricted_pod_security_on_the_server() {
    let c = cluster();
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "restricted").await;
    for mode in ["enforce", "warn"] {
        c.kubectl_ok(&[
            "label",
            "namespace",
            &ns.name,
            &format!("pod-security.kubernetes.io/{mode}=restricted"),
            &format!("pod-security.kubernetes.io/{mode}-version=latest"),
        ]);
    }
    let version = server_version(c);
    let out = c.helm(&[
        "template",
        "psa",
        CHART,
        "-n",
        &ns.name,
        "--kube-version",
        &version,
        "--set",
        "image.tag=test",
        // Profiles are not workloads, and the install test owns them in this cluster.
        "--set",
        "defaultProfiles.create=false",
    ]);
    assert!(
        out.status.success(),
        "helm template failed:\n{}",
        text(&out)
    );
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = support::repo().join(format!("target/e2e/psa-{}.yaml", std::process::id()));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("target/e2e");
    std::fs::write(&path, &rendered).expect("writing the rendered chart");
    let file = path.to_string_lossy().into_owned();

    let out = c.kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", &file]);
    let msg = text(&out);
    assert!(
        out.status.success(),
        "server dry run rejected the chart:\n{msg}"
    );
    assert!(
        !msg.contains("PodSecurity"),
        "Pod Security warnings:\n{msg}"
    );

    // Enforcement applies to Pods: create the controller's Pod from its template, server-side.
    let deploy: Value = serde_norway::from_str(
        rendered
            .split("\n---")
            .find(|doc| doc.contains("kind: Deployment"))
            .expect("a Deployment in the chart"),
    )
    .expect("deployment yaml");
    // The chart's ServiceAccount only exists in the dry run; the namespace's default one stands in.
    let mut spec = deploy["spec"]["template"]["spec"].clone();
    spec["serviceAccountName"] = "default".into();
    c.kubectl_ok(&[
        "wait",
        "--for=create",
        "serviceaccount/default",
        "-n",
        &ns.name,
        "--timeout=60s",
    ]);
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "psa-check", "namespace": ns.name },
        "spec": spec,
    });
    let pod_path = path.with_extension("pod.json");
    std::fs::write(&pod_path, pod.to_string()).expect("writing the pod");
    let out = c.kubectl(&[
        "create",
        "--dry-run=server",
        "-f",
        &pod_path.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "restricted namespace rejected the controller pod:\n{}",
        text(&out)
    );
    ns.delete().await;
}
