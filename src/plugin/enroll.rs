//! `automend enroll` and `kubectl automend enroll`: create an Enrollment and print its token with
//! a ready cloud-init or shell snippet for the machines; mint another token for one.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, PostParams};

use crate::api::{Enrollment, EnrollmentSpec, Placement, Text};
use crate::logic::enroll::service_account_name;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum EnrollCommand {
    /// Create an Enrollment and print its token with a snippet for the machines.
    Create(CreateArgs),
    /// Print a new token (and snippet) for an existing Enrollment.
    Token {
        name: String,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct CreateArgs {
    /// The Enrollment's name.
    pub name: String,
    /// The ConfigurationProfile of the new VMs (default: assignment rules choose).
    #[arg(long)]
    pub profile: Option<String>,
    /// A label every new VM gets, KEY=VALUE (repeatable), e.g. ring=pilot.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// A label key machines may set themselves (repeatable).
    #[arg(long = "allow-label")]
    pub allowed_labels: Vec<String>,
    /// How many machines may enroll (default: no limit).
    #[arg(long)]
    pub max_machines: Option<i32>,
    /// How long the Enrollment accepts machines.
    #[arg(long, default_value = "24h", value_parser = crate::logic::duration::parse)]
    pub ttl: Duration,
    /// Region of machines that do not give their own.
    #[arg(long)]
    pub region: Option<String>,
    /// Zone of machines that do not give their own.
    #[arg(long)]
    pub zone: Option<String>,
    #[command(flatten)]
    pub output: Output,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Output {
    /// What to print: a cloud-init user-data file, a shell script, or the token alone.
    #[arg(long, value_enum, default_value = "cloud-init")]
    pub format: Format,
    /// The API server URL machines use (default: the current kubeconfig's).
    #[arg(long)]
    pub server: Option<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    CloudInit,
    Shell,
    Token,
}

pub async fn run(client: Client, ns: &str, cmd: EnrollCommand) -> anyhow::Result<String> {
    let api: Api<Enrollment> = Api::namespaced(client.clone(), ns);
    let (name, output) = match cmd {
        EnrollCommand::Create(args) => {
            let spec = spec(&args, Timestamp::now())?;
            let e = Enrollment::new(&args.name, spec);
            match api.create(&PostParams::default(), &e).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => bail!(
                    "enrollment {ns}/{} already exists; print another token with `enroll token {}`",
                    args.name,
                    args.name
                ),
                Err(e) => return Err(e).context("creating the Enrollment"),
            }
            (args.name, args.output)
        }
        EnrollCommand::Token { name, output } => (name, output),
    };
    let e = api
        .get_opt(&name)
        .await?
        .with_context(|| format!("enrollment {ns}/{name} not found"))?;
    let left = crate::logic::duration::until(Timestamp::now(), e.spec.expires_at.0);
    if left.is_zero() {
        bail!(
            "enrollment {ns}/{name} expired at {}; create a new one",
            e.spec.expires_at.0
        );
    }
    // The controller creates the Enrollment's ServiceAccount.
    let sa = service_account_name(&name);
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sas.get_opt(&sa).await?.is_none() {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "ServiceAccount {ns}/{sa} did not appear within a minute: is the Automend controller running?"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let token = request(&client, ns, &sa, left).await?;
    if output.format == Format::Token {
        return Ok(format!("{token}\n"));
    }
    let cluster = crate::kubeconfig::current_cluster(output.server.as_deref())?;
    let server = cluster.server.clone().unwrap_or_default();
    let ca = cluster
        .certificate_authority_data
        .as_deref()
        .map(|d| base64::engine::general_purpose::STANDARD.decode(d))
        .transpose()
        .context("the kubeconfig's certificate-authority-data is not base64")?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .context("the kubeconfig's cluster has no CA certificate")?;
    let what = format!("{ns}/{name}, expires {}", e.spec.expires_at.0);
    Ok(snippet(output.format, &token, &server, &ca, &what))
}

/// A token of the Enrollment's ServiceAccount that lives until the Enrollment expires (at least
/// the TokenRequest API's 10 minutes).
async fn request(client: &Client, ns: &str, sa: &str, left: Duration) -> anyhow::Result<String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let tr = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(left.as_secs().max(600) as i64),
            ..Default::default()
        },
        ..Default::default()
    };
    let resp = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &tr)
        .await
        .with_context(|| {
            format!("requesting a token of {ns}/{sa} (may you create serviceaccounts/token?)")
        })?;
    resp.status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .context("the TokenRequest answered without a token")
}

fn spec(args: &CreateArgs, now: Timestamp) -> anyhow::Result<EnrollmentSpec> {
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--label {l}: expected KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    if args.ttl < Duration::from_secs(600) {
        bail!("--ttl must be at least 10m (tokens live at least that long)");
    }
    Ok(EnrollmentSpec {
        profile: args.profile.clone(),
        labels,
        allowed_labels: args.allowed_labels.clone(),
        max_machines: args.max_machines,
        expires_at: Time(crate::logic::duration::add(now, args.ttl)),
        placement: args.region.clone().map(|region| Placement {
            region: region.into(),
            zone: args.zone.as_deref().map(Text::from),
            availability_set: None,
            update_domain: None,
            fault_domain: None,
        }),
        time_zone: None,
        patch_mode: None,
    })
}

/// What a machine runs to enroll: files under /etc/automend, then the agent's unit. The agent
/// binary and its unit (`dist/automend-agent.service`) are expected on the image.
pub fn snippet(format: Format, token: &str, server: &str, ca_pem: &str, what: &str) -> String {
    let env = format!(
        "AUTOMEND_SERVER={server}\nAUTOMEND_CA_FILE=/etc/automend/ca.crt\nAUTOMEND_ENROLL_TOKEN_FILE=/etc/automend/enroll-token\n# Where the machine runs (the enrollment's placement fills what is not given):\n# AUTOMEND_REGION=westeurope\n# AUTOMEND_ZONE=1\n# AUTOMEND_UPDATE_DOMAIN=0\n"
    );
    let ca = ca_pem.trim_end();
    match format {
        Format::Token => format!("{token}\n"),
        Format::Shell => format!(
            "#!/bin/sh\n# Enroll this machine with Automend (enrollment {what}).\n# Needs /usr/local/bin/automend and /etc/systemd/system/automend-agent.service on the machine.\nset -eu\ninstall -d -m 0700 /etc/automend\numask 077\ncat > /etc/automend/enroll-token <<'AUTOMEND_EOF'\n{token}\nAUTOMEND_EOF\ncat > /etc/automend/ca.crt <<'AUTOMEND_EOF'\n{ca}\nAUTOMEND_EOF\ncat > /etc/automend/agent.env <<'AUTOMEND_EOF'\n{env}AUTOMEND_EOF\nsystemctl daemon-reload\nsystemctl enable --now automend-agent.service\n"
        ),
        Format::CloudInit => {
            let indent = |s: &str| {
                s.lines()
                    .map(|l| format!("      {l}\n"))
                    .collect::<String>()
            };
            format!(
                "#cloud-config\n# Enroll this machine with Automend (enrollment {what}).\n# Needs /usr/local/bin/automend and /etc/systemd/system/automend-agent.service on the image.\nwrite_files:\n  - path: /etc/automend/enroll-token\n    permissions: '0600'\n    content: |\n{}  - path: /etc/automend/ca.crt\n    permissions: '0644'\n    content: |\n{}  - path: /etc/automend/agent.env\n    permissions: '0600'\n    content: |\n{}runcmd:\n  - [systemctl, daemon-reload]\n  - [systemctl, enable, --now, automend-agent.service]\n",
                indent(token),
                indent(ca),
                indent(&env)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_carry_the_token_ca_and_server() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let shell = snippet(
            Format::Shell,
            "tok",
            "https://10.0.0.1:6443",
            ca,
            "prod/fleet",
        );
        assert!(shell.contains("<<'AUTOMEND_EOF'\ntok\nAUTOMEND_EOF"));
        assert!(shell.contains("AUTOMEND_SERVER=https://10.0.0.1:6443"));
        assert!(shell.contains("MIIB\n-----END CERTIFICATE-----\nAUTOMEND_EOF"));
        assert!(shell.contains("systemctl enable --now automend-agent.service"));
        let ci = snippet(Format::CloudInit, "tok", "https://h", ca, "prod/fleet");
        let doc: serde_json::Value = serde_norway::from_str(&ci).expect("valid YAML");
        let files = doc["write_files"].as_array().expect("files");
        assert_eq!(files[0]["content"].as_str(), Some("tok\n"));
        assert!(
            files[1]["content"]
                .as_str()
                .unwrap_or("")
                .starts_with("-----BEGIN")
        );
        assert!(
            files[2]["content"]
                .as_str()
                .unwrap_or("")
                .contains("AUTOMEND_ENROLL_TOKEN_FILE=/etc/automend/enroll-token")
        );
        assert_eq!(snippet(Format::Token, "tok", "", "", ""), "tok\n");
    }

    #[test]
    fn labels_and_ttl_are_checked() {
        let args = |labels: Vec<&str>, ttl: u64| CreateArgs {
            name: "f".into(),
            profile: None,
            labels: labels.into_iter().map(String::from).collect(),
            allowed_labels: vec![],
            max_machines: Some(3),
            ttl: Duration::from_secs(ttl),
            region: Some("westeurope".into()),
            zone: None,
            output: Output {
                format: Format::Token,
                server: None,
            },
        };
        let now: Timestamp = "2026-11-23T00:00:00Z".parse().expect("ts");
        let s = spec(&args(vec!["ring=pilot"], 3600), now).expect("spec");
        assert_eq!(s.labels["ring"], "pilot");
        assert_eq!(s.expires_at.0.to_string(), "2026-11-23T01:00:00Z");
        assert_eq!(s.placement.map(|p| p.region).as_deref(), Some("westeurope"));
        assert!(
            spec(&args(vec!["ring"], 3600), now)
                .unwrap_err()
                .to_string()
                .contains("KEY=VALUE")
        );
        assert!(
            spec(&args(vec![], 60), now)
                .unwrap_err()
                .to_string()
                .contains("--ttl")
        );
    }
}
