//! Enrollment on the machine: with an Enrollment's token, create an EnrollmentRequest carrying
//! the machine's facts and its public key, wait for the answer, open the sealed guest token, and
//! keep the VM's identity in the state directory (`identity.json`, `kubeconfig` with a
//! `tokenFile`, `token`). The enrollment token is then dropped: the agent runs as its VM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use kube::api::Api;
use kube::config::{AuthInfo, Cluster, Kubeconfig};
use tracing::{info, warn};

use super::credential::{Token, token_path};
use super::exec;
use super::os::OsRelease;
use crate::api::{EnrollmentRequest, EnrollmentRequestSpec};
use crate::logic::enroll::ENROLL_PREFIX;
use crate::sealed::{self, KeyPair};

/// Enrollment flags (or the same variables in `/etc/automend/agent.env`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct EnrollArgs {
    /// A token of an Enrollment (`automend enroll create` prints it); used when this machine has
    /// no identity yet, or its credential expired.
    #[arg(long, env = "AUTOMEND_ENROLL_TOKEN_FILE")]
    pub enroll_token_file: Option<PathBuf>,
    /// The API server URL (enrollment).
    #[arg(long, env = "AUTOMEND_SERVER")]
    pub server: Option<String>,
    /// The API server's CA certificate, PEM (enrollment).
    #[arg(long, env = "AUTOMEND_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The machine's region (the Enrollment's placement fills what is not given).
    #[arg(long, env = "AUTOMEND_REGION")]
    pub region: Option<String>,
    #[arg(long, env = "AUTOMEND_ZONE")]
    pub zone: Option<String>,
    #[arg(long, env = "AUTOMEND_AVAILABILITY_SET")]
    pub availability_set: Option<String>,
    #[arg(long, env = "AUTOMEND_UPDATE_DOMAIN")]
    pub update_domain: Option<i32>,
    #[arg(long, env = "AUTOMEND_FAULT_DOMAIN")]
    pub fault_domain: Option<i32>,
    /// Labels the machine asks for, KEY=VALUE (only keys the Enrollment allows).
    #[arg(long = "label", env = "AUTOMEND_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// The hostname to report (default: the machine's).
    #[arg(long, env = "AUTOMEND_HOSTNAME")]
    pub hostname: Option<String>,
    /// How long to wait for the controller's answer.
    #[arg(long, default_value = "5m", value_parser = crate::logic::duration::parse)]
    pub enroll_timeout: Duration,
}

/// What enrollment leaves in the state directory.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub vm: String,
    pub namespace: String,
}

pub fn identity_path(state: &Path) -> PathBuf {
    state.join("identity.json")
}

pub fn kubeconfig_path(state: &Path) -> PathBuf {
    state.join("kubeconfig")
}

impl Identity {
    pub fn read(state: &Path) -> Option<Identity> {
        let text = std::fs::read_to_string(identity_path(state)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// The machine's facts, as the request carries them.
fn facts(
    args: &EnrollArgs,
    root: &Path,
    enrollment: &str,
    key: &KeyPair,
) -> anyhow::Result<EnrollmentRequestSpec> {
    let os = OsRelease::read(root).map_err(anyhow::Error::msg)?;
    let hostname = match &args.hostname {
        Some(h) => h.clone(),
        None => ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| std::fs::read_to_string(exec::under(root, p)).ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .context("the machine has no hostname (give --hostname)")?,
    };
    let time_zone = std::fs::read_to_string(exec::under(root, "/etc/timezone"))
        .ok()
        .map(|t| t.trim().to_string())
        .or_else(|| {
            std::fs::read_link(exec::under(root, "/etc/localtime"))
                .ok()
                .and_then(|p| {
                    p.to_str()
                        .and_then(|s| s.split_once("zoneinfo/"))
                        .map(|(_, z)| z.to_string())
                })
        })
        .filter(|t| !t.is_empty());
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--label {l}: expected KEY=VALUE"))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(EnrollmentRequestSpec {
        enrollment: enrollment.to_string(),
        public_key: key.public(),
        hostname,
        os_id: os.id,
        os_version: os.version_id,
        os_pretty_name: os.pretty_name,
        architecture: std::env::consts::ARCH.to_string(),
        region: args.region.clone(),
        zone: args.zone.clone(),
        availability_set: args.availability_set.clone(),
        update_domain: args.update_domain,
        fault_domain: args.fault_domain,
        time_zone,
        labels,
    })
}

/// A kubeconfig for the API server with a token (inline) or a token file.
pub fn kubeconfig(server: &str, ca_pem: &[u8], namespace: &str, auth: AuthInfo) -> Kubeconfig {
    let cluster = Cluster {
        server: Some(server.to_string()),
        certificate_authority_data: Some(base64::engine::general_purpose::STANDARD.encode(ca_pem)),
        ..Default::default()
    };
    crate::kubeconfig::single("automend", cluster, namespace, auth)
}

/// Why an enrollment failed: refused by the controller (do not retry with the same token), or
/// anything else (retry).
#[derive(Debug)]
pub enum Failure {
    Refused(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// Enroll the machine; on success its identity is in the state directory.
pub async fn enroll(
    args: &EnrollArgs,
    root: &Path,
    state: &Path,
    token_file: &Path,
) -> Result<Identity, Failure> {
    let token = Token::read(token_file)
        .with_context(|| format!("reading the enrollment token {}", token_file.display()))?;
    let Some((namespace, sa)) = token.service_account.clone() else {
        return Err(Failure::Other(anyhow::anyhow!(
            "{} does not hold a ServiceAccount token (print one with `automend enroll create`)",
            token_file.display()
        )));
    };
    let Some(enrollment) = sa.strip_prefix(ENROLL_PREFIX).map(str::to_string) else {
        return Err(Failure::Other(anyhow::anyhow!(
            "{} is a token of ServiceAccount {sa}, not of an Enrollment (automend-enroll-<name>)",
            token_file.display()
        )));
    };
    let server = args
        .server
        .clone()
        .context("enrollment needs --server (AUTOMEND_SERVER)")?;
    let ca_file = args
        .ca_file
        .clone()
        .context("enrollment needs --ca-file (AUTOMEND_CA_FILE)")?;
    let ca = std::fs::read(&ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
    let key = KeyPair::load_or_create(&state.join("enroll.key")).map_err(anyhow::Error::msg)?;
    let spec = facts(args, root, &enrollment, &key)?;
    let auth = AuthInfo {
        token: Some(secrecy::SecretString::from(token.value.clone())),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig(&server, &ca, &namespace, auth),
        &Default::default(),
    )
    .await
    .context("building the enrollment client")?;
    let client = crate::kubeclient::client_for(config)?;
    let api: Api<EnrollmentRequest> = Api::namespaced(client, &namespace);
    info!(%namespace, %enrollment, "enrolling this machine");
    let answer = crate::guest::enroll::ask(&api, spec, &key, args.enroll_timeout)
        .await
        .map_err(|e| match e {
            crate::guest::enroll::Refusal::Refused(m) => Failure::Refused(m),
            crate::guest::enroll::Refusal::Failed(m) => Failure::Other(anyhow::anyhow!(m)),
        })?;
    let (vm, guest_token, reenrolled) = (answer.vm, answer.token, answer.reenrolled);
    let identity = Identity {
        vm: vm.clone(),
        namespace: namespace.clone(),
    };
    let write = |path: PathBuf, body: Vec<u8>| {
        sealed::write_private(&path, &body).map_err(anyhow::Error::msg)
    };
    write(token_path(state), guest_token.into_bytes())?;
    let auth = AuthInfo {
        token_file: Some(token_path(state).display().to_string()),
        ..Default::default()
    };
    let kc = kubeconfig(&server, &ca, &namespace, auth);
    write(
        kubeconfig_path(state),
        serde_norway::to_string(&kc)
            .context("kubeconfig")?
            .into_bytes(),
    )?;
    write(
        identity_path(state),
        serde_json::to_vec_pretty(&identity).context("identity")?,
    )?;
    info!(%vm, %namespace, reenrolled, "enrolled; running as the VM's own identity");
    // The enrollment credential is no longer needed: drop it.
    match std::fs::remove_file(token_file) {
        Ok(()) => info!(file = %token_file.display(), "enrollment token removed"),
        Err(e) => {
            warn!(file = %token_file.display(), error = %e, "could not remove the enrollment token")
        }
    }
    Ok(identity)
}

/// The enrollment token's fingerprint, to recognise a token that was refused before.
pub fn token_digest(token_file: &Path) -> Option<String> {
    use sha2::Digest as _;
    let body = std::fs::read(token_file).ok()?;
    let d = sha2::Sha256::digest(&body);
    Some(d.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

/// Fail when the token file holds the token refused last time (the agent then waits for a new
/// one instead of asking again every restart).
pub fn refused_before(state: &Path, token_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state.join("enroll-refused")).ok()?;
    let (digest, reason) = text.split_once('\n')?;
    (Some(digest.to_string()) == token_digest(token_file)).then(|| reason.to_string())
}

pub fn remember_refusal(state: &Path, token_file: &Path, reason: &str) {
    if let Some(d) = token_digest(token_file)
        && let Err(e) = sealed::write_private(
            &state.join("enroll-refused"),
            format!("{d}\n{reason}").as_bytes(),
        )
    {
        warn!(error = %e, "remembering the refusal");
    }
}

pub fn no_identity() -> anyhow::Error {
    anyhow::anyhow!(
        "this machine has no identity: enroll it (--enroll-token-file, --server, --ca-file; see `automend enroll create`) or give --vm with --kubeconfig from `automend guest-kubeconfig`"
    )
}
