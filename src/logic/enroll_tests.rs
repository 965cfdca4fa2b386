use super::*;
use crate::api::{EnrollmentRequestSpec, EnrollmentSpec};
use crate::sealed::KeyPair;

fn now() -> Timestamp {
    "2026-11-23T12:00:00Z".parse().expect("ts")
}

fn enrollment(max: Option<i32>) -> Enrollment {
    let mut e = Enrollment::new(
        "fleet",
        EnrollmentSpec {
            profile: Some("production".into()),
            labels: BTreeMap::from([("ring".into(), "pilot".into())]),
            allowed_labels: vec!["role".into()],
            max_machines: max,
            expires_at: Time("2026-11-24T12:00:00Z".parse().expect("ts")),
            placement: Some(Placement {
                region: "westeurope".into(),
                zone: Some("1".into()),
                availability_set: None,
                update_domain: None,
                fault_domain: None,
            }),
            time_zone: None,
            patch_mode: None,
        },
    );
    e.metadata.namespace = Some("prod".into());
    e
}

fn request(name: &str, host: &str, key: &KeyPair) -> EnrollmentRequest {
    let mut r = EnrollmentRequest::new(
        name,
        EnrollmentRequestSpec {
            enrollment: "fleet".into(),
            public_key: key.public(),
            hostname: host.into(),
            os_id: "debian".into(),
            os_version: Some("12".into()),
            os_pretty_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
            architecture: "x86_64".into(),
            region: None,
            zone: Some("2".into()),
            availability_set: None,
            update_domain: None,
            fault_domain: None,
            time_zone: None,
            labels: BTreeMap::new(),
        },
    );
    r.metadata.namespace = Some("prod".into());
    r
}

fn one(e: Option<&Enrollment>, enrolled: i32, r: &EnrollmentRequest, vms: &[KnownVm]) -> Decision {
    let out = decide_all(e, enrolled, &[r], vms, &ImageCatalog::default(), now());
    out.into_iter().next().expect("one").1
}

fn refusal(d: &Decision) -> (Refusal, String) {
    match d {
        Decision::Refuse { why, message } => (*why, message.clone()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn an_approved_machine_becomes_a_vm_with_the_enrollments_settings_and_its_facts() {
    let e = enrollment(Some(10));
    let key = KeyPair::generate();
    let mut r = request("r1", "Web-01.example.com", &key);
    r.spec.labels.insert("role".into(), "web".into());
    let Decision::Approve {
        vm,
        reenrolled,
        create: Some(created),
        key: fp,
    } = one(Some(&e), 0, &r, &[])
    else {
        panic!("approved");
    };
    assert_eq!(vm, "web-01");
    assert!(!reenrolled);
    let labels = created.metadata.labels.clone().expect("labels");
    assert_eq!(labels["ring"], "pilot");
    assert_eq!(labels["role"], "web");
    assert_eq!(labels[ENROLLMENT_LABEL], "fleet");
    let ann = created.metadata.annotations.clone().expect("annotations");
    assert_eq!(ann[KEY_ANNOTATION], fp);
    assert_eq!(ann[OS_ANNOTATION], "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(
        created.spec.management.profile.as_deref(),
        Some("production")
    );
    assert_eq!(created.spec.placement.region, "westeurope");
    assert_eq!(
        created.spec.placement.zone.as_deref(),
        Some("2"),
        "the machine's zone wins"
    );
    assert_eq!(created.spec.os.image.offer, "debian-12");
    assert_eq!(
        created.spec.patch_settings.patch_mode,
        Some(PatchMode::AutomaticByPlatform),
        "Debian 12 is in the catalog"
    );
    assert_eq!(created.metadata.namespace.as_deref(), Some("prod"));
}

#[test]
fn the_limit_is_exact_within_one_batch_and_names_stay_unique() {
    let e = enrollment(Some(3));
    let keys: Vec<KeyPair> = (0..5).map(|_| KeyPair::generate()).collect();
    let reqs: Vec<EnrollmentRequest> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| request(&format!("r{i}"), "web", k))
        .collect();
    let refs: Vec<&EnrollmentRequest> = reqs.iter().collect();
    let existing = [KnownVm {
        name: "web".into(),
        key: None,
    }];
    let out = decide_all(
        Some(&e),
        1,
        &refs,
        &existing,
        &ImageCatalog::default(),
        now(),
    );
    let approved: Vec<String> = out
        .iter()
        .filter_map(|(_, d)| match d {
            Decision::Approve { vm, .. } => Some(vm.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(approved.len(), 2, "1 enrolled before + 2 = the limit of 3");
    assert!(
        approved.iter().all(|n| n.starts_with("web-") && n != "web"),
        "{approved:?}"
    );
    assert_ne!(approved[0], approved[1]);
    for (_, d) in &out[2..] {
        let (why, msg) = refusal(d);
        assert_eq!(why, Refusal::LimitReached);
        assert!(msg.contains("limit of 3 machines"), "{msg}");
    }
}

#[test]
fn a_machine_with_its_key_gets_its_vm_back_even_at_the_limit() {
    let e = enrollment(Some(1));
    let key = KeyPair::generate();
    let fp = crate::sealed::fingerprint(&key.public()).expect("fp");
    let vms = [KnownVm {
        name: "db-7".into(),
        key: Some(fp),
    }];
    let d = one(Some(&e), 1, &request("r", "other-name", &key), &vms);
    assert!(
        matches!(d, Decision::Approve { ref vm, reenrolled: true, create: None, .. } if vm == "db-7"),
        "{d:?}"
    );
    // Another machine with the same hostname never takes it over.
    let d = one(
        Some(&e),
        0,
        &request("r", "db-7", &KeyPair::generate()),
        &vms,
    );
    assert!(
        matches!(d, Decision::Approve { ref vm, reenrolled: false, .. } if vm.starts_with("db-7-")),
        "{d:?}"
    );
}

#[test]
fn refusals_name_their_reason() {
    let key = KeyPair::generate();
    let r = request("r", "web", &key);
    assert_eq!(
        refusal(&one(None, 0, &r, &[])).0,
        Refusal::EnrollmentNotFound
    );
    let mut expired = enrollment(None);
    expired.spec.expires_at = Time("2026-11-23T11:00:00Z".parse().expect("ts"));
    let (why, msg) = refusal(&one(Some(&expired), 0, &r, &[]));
    assert_eq!(why, Refusal::Expired);
    assert!(msg.contains("expired at 2026-11-23T11:00:00Z"), "{msg}");
    let e = enrollment(None);
    let mut bad = r.clone();
    bad.spec.labels.insert("team".into(), "x".into());
    let (why, msg) = refusal(&one(Some(&e), 0, &bad, &[]));
    assert_eq!(why, Refusal::LabelNotAllowed);
    assert!(
        msg.contains("label team") && msg.contains("allowedLabels: role"),
        "{msg}"
    );
    let mut bad = r.clone();
    bad.spec.hostname = "web_01!".into();
    assert!(
        refusal(&one(Some(&e), 0, &bad, &[]))
            .1
            .contains("spec.hostname")
    );
    let mut bad = r.clone();
    bad.spec.public_key = "c2hvcnQ=".into();
    assert!(
        refusal(&one(Some(&e), 0, &bad, &[]))
            .1
            .contains("publicKey must be 32 bytes")
    );
    let mut bad = r.clone();
    bad.spec.region = Some("West Europe".into());
    assert!(
        refusal(&one(Some(&e), 0, &bad, &[]))
            .1
            .contains("spec.region")
    );
    let mut no_region = enrollment(None);
    no_region.spec.placement = None;
    let (why, msg) = refusal(&one(Some(&no_region), 0, &r, &[]));
    assert_eq!(why, Refusal::InvalidFacts);
    assert!(msg.contains("no region"), "{msg}");
    let mut bad = r.clone();
    bad.spec.time_zone = Some("Mars/Olympus".into());
    assert!(
        refusal(&one(Some(&e), 0, &bad, &[]))
            .1
            .contains("spec.timeZone")
    );
}

#[test]
fn images_from_os_release() {
    assert_eq!(image_for("ubuntu", Some("22.04")).sku, "22_04-lts");
    assert_eq!(image_for("rhel", Some("9.4")).sku, "9.4");
    assert_eq!(image_for("ol", Some("8.10")).sku, "ol8");
    let other = image_for("arch", None);
    assert_eq!(
        (other.publisher.as_str(), other.offer.as_str()),
        ("os-release", "arch")
    );
    let catalog = ImageCatalog::default();
    for (id, v) in [
        ("debian", "12"),
        ("ubuntu", "22.04"),
        ("ubuntu", "24.04"),
        ("rhel", "9.4"),
        ("rocky", "9.3"),
        ("almalinux", "8.9"),
        ("ol", "9.3"),
        ("fedora", "41"),
    ] {
        assert!(
            catalog.lookup(&image_for(id, Some(v))).is_some(),
            "{id} {v}"
        );
    }
    assert_eq!(name_from_hostname("--"), "machine");
    assert_eq!(name_from_hostname("DB_01.corp"), "db-01");
}

#[test]
fn the_ready_condition_says_why_machines_cannot_enroll() {
    let e = enrollment(Some(2));
    let c = conditions(&e, 1, now());
    assert_eq!(
        (c[0].status.as_str(), c[0].reason.as_str()),
        ("True", "Active")
    );
    assert!(c[0].message.contains("1 of 2"));
    assert_eq!(conditions(&e, 2, now())[0].reason, "Exhausted");
    let later: Timestamp = "2026-11-25T00:00:00Z".parse().expect("ts");
    assert_eq!(conditions(&e, 0, later)[0].reason, "Expired");
    let decided = Time(now());
    assert!(!expired_request(Some(&decided), now()));
    assert!(expired_request(Some(&decided), later));
    assert!(!expired_request(None, later));
}
