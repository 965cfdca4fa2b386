//! The agent's start: who this machine is (its enrolled identity, an enrollment, or the manual
//! `--vm` with `--kubeconfig`), the client on the renewed token file, and the guest loop with the
//! credential's renewal beside it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tracing::{info, warn};

use super::{AgentArgs, Linux, credential, enroll};
use crate::guest::{Backend, Guest, Timing, journal::Journal};

/// Run the agent until SIGTERM or Ctrl-C.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let clock = crate::clock::Clock::from_args(&args.clock).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating the state directory {}", args.state_dir.display()))?;
    let (kubeconfig_path, vm, namespace) = identify(&args).await?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig_path).with_context(|| {
        format!(
            "reading the kubeconfig {} (create it with `automend guest-kubeconfig {vm}`)",
            kubeconfig_path.display(),
        )
    })?;
    // The client reads the state directory's token file (re-read every minute), which renewal
    // replaces; a kubeconfig handed over again with a longer-lived token wins.
    let state_token = credential::token_path(&args.state_dir);
    let handed = kubeconfig
        .auth_infos
        .first()
        .and_then(|a| a.auth_info.as_ref())
        .and_then(|a| {
            a.token
                .as_ref()
                .map(|t| credential::Token::parse(secrecy::ExposeSecret::expose_secret(t)))
                .or_else(|| {
                    a.token_file
                        .as_ref()
                        .and_then(|f| credential::Token::read(Path::new(f)))
                })
        });
    let current = credential::Token::read(&state_token);
    let chosen = credential::newest(current.clone(), handed)
        .context("the kubeconfig has no token (inline or tokenFile)")?;
    if Some(&chosen) != current.as_ref() {
        crate::sealed::write_private(&state_token, chosen.value.as_bytes())
            .map_err(anyhow::Error::msg)?;
    }
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("loading the kubeconfig {}", kubeconfig_path.display()))?;
    config.auth_info.token = None;
    config.auth_info.token_file = Some(state_token.display().to_string());
    let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
    let client = crate::kubeclient::client_for(config)?;
    let backend = Linux::new(
        &args.root,
        &args.state_dir,
        args.package_manager,
        args.host.clone(),
        clock,
    )
    .with_reboot(args.reboot.clone());
    for p in backend.problems() {
        warn!(problem = %p, "on this machine");
    }
    info!(vm = %vm, namespace = %namespace, root = %args.root.display(), os = ?backend.os(), "automend agent starting");
    let timing = Timing {
        heartbeat: args.heartbeat_interval,
        observe: args.observe_interval,
        clock,
    };
    let (expiry_tx, expiry_rx) = tokio::sync::watch::channel(None);
    let guest = Guest::new(client.clone(), &namespace, &vm, backend, timing)
        .with_journal(Journal::new(&args.state_dir))
        .with_credential(expiry_rx);
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
    let renewal = tokio::spawn(async move {
        let e = credential::renew_loop(
            client,
            namespace,
            vm,
            state_token,
            args.token_lifetime,
            args.token_renew_every,
            expiry_tx,
        )
        .await;
        let _ = lost_tx.send(e);
    });
    let mut lost = None;
    guest
        .run(async {
            tokio::select! {
                _ = shutdown() => {}
                e = lost_rx => lost = e.ok(),
            }
        })
        .await;
    renewal.abort();
    info!("automend agent stopped");
    match lost {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The kubeconfig, VM and namespace this machine runs as: its enrolled identity (enrolling
/// first when it has none, or its credential expired and an enrollment token is there), or the
/// manual `--vm` with `--kubeconfig`. Waits (and says why) while there is nothing to run as.
async fn identify(args: &AgentArgs) -> anyhow::Result<(PathBuf, String, Option<String>)> {
    let state = &args.state_dir;
    let mut said = None::<String>;
    let mut wait = |why: String| {
        if said.as_ref() != Some(&why) {
            tracing::error!("{why}");
            said = Some(why);
        }
        tokio::time::sleep(Duration::from_secs(10))
    };
    loop {
        let token_file = args.enroll.enroll_token_file.clone().filter(|f| f.exists());
        if let Some(id) = enroll::Identity::read(state) {
            let token = credential::Token::read(&credential::token_path(state));
            let now = jiff::Timestamp::now();
            if token.as_ref().is_some_and(|t| !t.expired(now)) {
                return Ok((enroll::kubeconfig_path(state), id.vm, Some(id.namespace)));
            }
            if token_file.is_none() {
                let at = token
                    .and_then(|t| t.expires)
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "an unknown time".into());
                wait(format!(
                    "credential of VM {}/{} expired at {at}; re-enroll the machine: put a new enrollment token in {}",
                    id.namespace,
                    id.vm,
                    args.enroll
                        .enroll_token_file
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "the --enroll-token-file".into())
                ))
                .await;
                continue;
            }
        } else if let Some(vm) = &args.vm {
            return Ok((args.kubeconfig.clone(), vm.clone(), args.namespace.clone()));
        }
        let Some(file) = token_file else {
            return Err(enroll::no_identity());
        };
        if let Some(reason) = enroll::refused_before(state, &file) {
            wait(format!(
                "the enrollment token in {} was refused ({reason}); waiting for a new one",
                file.display()
            ))
            .await;
            continue;
        }
        match enroll::enroll(&args.enroll, &args.root, state, &file).await {
            Ok(_) => continue,
            Err(enroll::Failure::Refused(reason)) => {
                enroll::remember_refusal(state, &file, &reason);
                wait(format!("enrollment refused: {reason}")).await;
            }
            Err(enroll::Failure::Other(e)) => wait(format!("enrolling: {e:#}")).await,
        }
    }
}

async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
