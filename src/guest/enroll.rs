//! The guest side of enrollment, shared by the agent and the simulator: create an
//! EnrollmentRequest under a name only this machine knows, wait for the controller's answer, and
//! open the guest token sealed to the machine's key.

use std::time::Duration;

use kube::api::{Api, PostParams};
use tracing::warn;

use crate::api::{EnrollmentRequest, EnrollmentRequestSpec, RequestPhase};
use crate::logic::enroll::name_from_hostname;
use crate::sealed::{self, KeyPair};

/// What the controller answered.
#[derive(Clone, Debug)]
pub struct Answer {
    pub vm: String,
    pub token: String,
    pub reenrolled: bool,
}

/// Why there is no answer: refused by the controller (asking again with the same token will
/// not help), or failed (ask again later).
#[derive(Clone, Debug)]
pub enum Refusal {
    Refused(String),
    Failed(String),
}

/// Ask to enroll and wait up to `timeout` for the answer.
pub async fn ask(
    api: &Api<EnrollmentRequest>,
    spec: EnrollmentRequestSpec,
    key: &KeyPair,
    timeout: Duration,
) -> Result<Answer, Refusal> {
    // The enrollment credential may read a request by name but not list them: the name is the
    // only way to the answer, so it is unguessable.
    let base: String = name_from_hostname(&spec.hostname)
        .chars()
        .take(30)
        .collect();
    let name = format!("{}-{}", base.trim_end_matches('-'), sealed::random_hex(16));
    let enrollment = spec.enrollment.clone();
    let request = EnrollmentRequest::new(&name, spec);
    if let Err(e) = api.create(&PostParams::default(), &request).await {
        return Err(Refusal::Failed(match &e {
            kube::Error::Api(s) if s.code == 401 => format!(
                "the enrollment token was rejected: it expired, or enrollment {enrollment} was deleted"
            ),
            kube::Error::Api(s) => {
                format!(
                    "the API server refused the enrollment request: {}",
                    s.message
                )
            }
            _ => format!("creating the EnrollmentRequest: {e}"),
        }));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut wait = Duration::from_millis(200);
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
        match api.get(&name).await {
            Ok(r) => {
                let s = r.status.unwrap_or_default();
                match (s.phase, s.sealed_token) {
                    (RequestPhase::Refused, _) => {
                        return Err(Refusal::Refused(format!(
                            "{}: {}",
                            s.reason.unwrap_or_default(),
                            s.message.unwrap_or_default()
                        )));
                    }
                    (RequestPhase::Approved, Some(sealed)) => {
                        let token = key.open(&sealed).map_err(Refusal::Failed)?;
                        let token = String::from_utf8(token)
                            .map_err(|_| Refusal::Failed("the guest token is not text".into()))?;
                        return Ok(Answer {
                            vm: s.virtual_machine.unwrap_or_default(),
                            token,
                            reenrolled: s.reenrolled,
                        });
                    }
                    _ => {}
                }
            }
            Err(e) => {
                warn!(error = %e, request = %name, "reading the answer to the enrollment request")
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Refusal::Failed(format!(
                "no answer to enrollment request {name} within {timeout:?} (is the controller running?)"
            )));
        }
    }
}
