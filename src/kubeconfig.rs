//! `automend guest-kubeconfig`: a kubeconfig for one VM's guest agent, with a short-lived token of
//! the VM's guest ServiceAccount (TokenRequest API). Whoever runs it needs `create` on
//! `serviceaccounts/token` in the VM's namespace; the token can do only what the guest may.

use std::time::Duration;

use anyhow::{Context as _, bail};
use kube::Client;
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};

use crate::guest::sim::request_token;
use crate::identity;

#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The VirtualMachine.
    pub vm: String,
    /// Its namespace.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// Token lifetime (at least 10m; the API server may shorten it).
    #[arg(long, default_value = "1h", value_parser = crate::logic::duration::parse)]
    pub duration: Duration,
    /// API server URL the guest uses (default: the one of the current kubeconfig context).
    #[arg(long)]
    pub server: Option<String>,
}

/// The current kubeconfig context's cluster, with the CA carried inline (the guest runs
/// elsewhere: never a path on this machine) and the server replaced when given.
pub fn current_cluster(server: Option<&str>) -> anyhow::Result<kube::config::Cluster> {
    let source = Kubeconfig::read().context("reading the current kubeconfig")?;
    let context_name = source
        .current_context
        .clone()
        .context("the kubeconfig has no current-context")?;
    let context = source
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .context("the kubeconfig's current context is missing")?;
    let mut cluster = source
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .context("the kubeconfig's current cluster is missing")?;
    if let Some(server) = server {
        cluster.server = Some(server.to_string());
    }
    if let Some(path) = cluster.certificate_authority.take() {
        let pem = std::fs::read(&path).with_context(|| format!("reading the cluster CA {path}"))?;
        cluster.certificate_authority_data = Some(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            pem,
        ));
    }
    Ok(cluster)
}

/// A kubeconfig of one cluster, one user and one context (all named `name`), current.
pub fn single(name: &str, cluster: Cluster, namespace: &str, auth: AuthInfo) -> Kubeconfig {
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: name.into(),
            cluster: Some(cluster),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: name.into(),
            auth_info: Some(auth),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: name.into(),
            context: Some(Context {
                cluster: name.into(),
                user: Some(name.into()),
                namespace: Some(namespace.into()),
                extensions: None,
                other: Default::default(),
            }),
            other: Default::default(),
        }],
        current_context: Some(name.into()),
        ..Default::default()
    }
}

/// Build the guest kubeconfig as YAML.
pub async fn run(args: Args) -> anyhow::Result<String> {
    if args.duration < Duration::from_secs(600) {
        bail!("--duration must be at least 10m (the TokenRequest API's minimum)");
    }
    let cluster = current_cluster(args.server.as_deref())?;
    let client = Client::try_default().await?;
    let token = request_token(&client, &args.namespace, &args.vm, args.duration)
        .await
        .with_context(|| {
            format!(
                "requesting a token for ServiceAccount {}/{} (is the VM managed, and may you create serviceaccounts/token?)",
                args.namespace,
                identity::guest_name(&args.vm)
            )
        })?;
    let name = format!("automend-guest-{}-{}", args.namespace, args.vm);
    let out = single(
        &name,
        cluster,
        &args.namespace,
        AuthInfo {
            token: Some(secrecy::SecretString::from(token)),
            ..Default::default()
        },
    );
    // AuthInfo's token is a secret: serialize it on purpose, since handing it over is the point.
    let mut value = serde_json::to_value(&out)?;
    if let Some(users) = value.get_mut("users").and_then(|u| u.as_array_mut()) {
        for u in users {
            if let Some(user) = u.get_mut("user") {
                user["token"] = serde_json::Value::String(
                    out.auth_infos[0]
                        .auth_info
                        .as_ref()
                        .and_then(|a| a.token.as_ref())
                        .map(|t| secrecy::ExposeSecret::expose_secret(t).to_string())
                        .unwrap_or_default(),
                );
            }
        }
    }
    Ok(serde_norway::to_string(&value)?)
}
