//! A simulated fleet that joins through an Enrollment, as real machines do: each simulated
//! machine generates its key, asks to enroll with the Enrollment's token, and plays the VM it
//! becomes with the guest token it got (renewing it itself). Refused machines are logged and
//! counted; they do not ask again.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kube::api::Api;
use tracing::{info, warn};

use super::Stats;
use super::fleet::{Identity, SimSettings, own_client, play};
use crate::api::{EnrollmentRequest, EnrollmentRequestSpec};
use crate::guest::enroll::{Refusal, ask};
use crate::logic::enroll::ENROLL_PREFIX;
use crate::sealed::KeyPair;

/// Enroll `settings.enroll` machines and play them until `stop`.
pub async fn run(
    base: kube::Config,
    settings: SimSettings,
    stats: Stats,
    stop: impl Future<Output = ()>,
) {
    let Some(file) = settings.enroll_token_file.clone() else {
        warn!("--enroll needs --enroll-token-file");
        return;
    };
    let token = match std::fs::read_to_string(&file) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            warn!(file = %file.display(), error = %e, "reading the enrollment token");
            return;
        }
    };
    let parsed = crate::agent::credential::Token::parse(&token);
    let Some((namespace, enrollment)) = parsed
        .service_account
        .and_then(|(ns, sa)| sa.strip_prefix(ENROLL_PREFIX).map(|e| (ns, e.to_string())))
    else {
        warn!(file = %file.display(), "not a token of an Enrollment's ServiceAccount");
        return;
    };
    let client = match own_client(&base, &namespace, &token) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "building the enrollment client");
            return;
        }
    };
    let api: Api<EnrollmentRequest> = Api::namespaced(client, &namespace);
    let settings = SimSettings {
        namespace: namespace.clone(),
        ..settings
    };
    let enrolled = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    info!(%namespace, %enrollment, machines = settings.enroll, "enrolling simulated machines");
    for i in 0..settings.enroll {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        let (api, base, settings, stats) =
            (api.clone(), base.clone(), settings.clone(), stats.clone());
        let (enrollment, enrolled, refused) =
            (enrollment.clone(), enrolled.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let key = KeyPair::generate();
            let spec = EnrollmentRequestSpec {
                enrollment,
                public_key: key.public(),
                hostname: format!("{}-{i:04}", settings.enroll_prefix),
                os_id: "ubuntu".into(),
                os_version: Some("22.04".into()),
                os_pretty_name: Some("Ubuntu 22.04 LTS (simulated)".into()),
                architecture: "x86_64".into(),
                region: settings.enroll_region.clone(),
                zone: None,
                availability_set: None,
                update_domain: None,
                fault_domain: None,
                time_zone: None,
                labels: Default::default(),
            };
            let answer = loop {
                match ask(&api, spec.clone(), &key, Duration::from_secs(300)).await {
                    Ok(a) => break a,
                    Err(Refusal::Refused(why)) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        warn!(machine = %spec.hostname, %why, "enrollment refused");
                        return;
                    }
                    Err(Refusal::Failed(why)) => {
                        warn!(machine = %spec.hostname, %why, "enrolling; trying again in 5s");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            };
            enrolled.fetch_add(1, Ordering::Relaxed);
            info!(machine = %spec.hostname, vm = %answer.vm, "enrolled");
            let vm = answer.vm.clone();
            play(
                Identity::Own(answer.token),
                base,
                settings,
                vm,
                true,
                stats,
                rx,
            )
            .await;
        }));
    }
    stop.await;
    for tx in stops {
        let _ = tx.send(());
    }
    for t in tasks {
        let _ = t.await;
    }
    info!(
        enrolled = enrolled.load(Ordering::Relaxed),
        refused = refused.load(Ordering::Relaxed),
        "simulated enrolled fleet stopped"
    );
}
