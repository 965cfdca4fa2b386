//! The agent's part of the patch lifecycle on a real machine: patch hooks run with `/bin/sh -c`
//! (own process group, killed whole at their time limit), the boot marker under `/run`, and the
//! reboot command.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::api::{Hook, HookName, HookRun, bounds};

/// How the agent reboots the machine and where it leaves its boot marker.
#[derive(Clone, Debug, clap::Args)]
pub struct RebootSettings {
    /// The command that reboots the machine (run with /bin/sh -c).
    #[arg(
        long,
        env = "AUTOMEND_REBOOT_COMMAND",
        default_value = "systemctl reboot"
    )]
    pub reboot_command: String,
    /// A folder every boot empties (a tmpfs such as /run): the boot marker lives there.
    #[arg(long, env = "AUTOMEND_RUN_DIR", default_value = "/run/automend")]
    pub run_dir: PathBuf,
}

impl Default for RebootSettings {
    fn default() -> Self {
        RebootSettings {
            reboot_command: "systemctl reboot".into(),
            run_dir: PathBuf::from("/run/automend"),
        }
    }
}

impl RebootSettings {
    pub fn marker(&self) -> PathBuf {
        self.run_dir.join("reboot-marker")
    }
}

/// Leave the boot marker (what it is for, inside).
pub fn mark(marker: &Path, what: &str) -> Result<(), String> {
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(marker, format!("{what}\n"))
        .map_err(|e| format!("writing the boot marker {}: {e}", marker.display()))
}

/// Run the reboot command; Ok once it returned successfully (the machine goes down after).
pub async fn reboot(command: &str) -> Result<(), String> {
    let out = super::exec::run(
        "/bin/sh",
        &["-c".into(), command.into()],
        &[],
        Duration::from_secs(120),
    )
    .await?;
    if out.success() {
        Ok(())
    } else {
        Err(format!("{command:?} exited {:?}: {}", out.code, out.tail()))
    }
}

/// The last lines of a hook's output, printable and within the status bound.
pub fn output_tail(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
                .collect::<String>()
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    let mut out = lines[lines.len().saturating_sub(20)..].join("\n");
    while out.len() > bounds::HOOK_OUTPUT {
        // Keep the end: the last lines say why it failed.
        let cut = out.len() - bounds::HOOK_OUTPUT;
        let at = (cut..out.len())
            .find(|i| out.is_char_boundary(*i))
            .unwrap_or(out.len());
        out = out[at..].to_string();
    }
    out
}

/// Run a hook: `/bin/sh -c`, stderr merged into stdout, killed (its whole process group) at its
/// time limit.
pub async fn run_hook(hook: HookName, spec: &Hook, env: Vec<(String, String)>) -> HookRun {
    let limit = crate::logic::duration::parse_or(
        &spec.timeout,
        Duration::from_secs(600),
        format_args!("the {hook} hook"),
        "timeout",
    );
    let failed = |output: String| HookRun {
        hook,
        exit_code: None,
        succeeded: false,
        output,
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("exec 2>&1\n{}", spec.command))
        .current_dir("/")
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start /bin/sh: {e}")),
    };
    let mut stdout = child.stdout.take();
    let pid = child.id();
    let run = async {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf).await;
        }
        (child.wait().await, buf)
    };
    match tokio::time::timeout(limit, run).await {
        Ok((Ok(status), buf)) => HookRun {
            hook,
            exit_code: status.code(),
            succeeded: status.success(),
            output: output_tail(&buf),
        },
        Ok((Err(e), _)) => failed(format!("waiting for the hook: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                // The whole group: the shell and whatever it started.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
            failed(format!(
                "killed after its time limit of {}",
                crate::logic::duration::format(limit)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(command: &str, timeout: &str) -> Hook {
        Hook {
            command: command.into(),
            timeout: timeout.into(),
        }
    }

    #[tokio::test]
    async fn a_hook_sees_its_environment_and_its_output_is_kept() {
        let run = run_hook(
            HookName::PreInstall,
            &hook(
                "echo \"$AUTOMEND_HOOK $AUTOMEND_ROLLOUT\"; echo oops >&2; exit 3",
                "10s",
            ),
            vec![
                ("AUTOMEND_HOOK".into(), "preInstall".into()),
                ("AUTOMEND_ROLLOUT".into(), "r1".into()),
            ],
        )
        .await;
        assert!(!run.succeeded);
        assert_eq!(run.exit_code, Some(3));
        assert_eq!(run.output, "preInstall r1\noops");
    }

    #[tokio::test]
    async fn a_hook_past_its_time_limit_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = dir.path().join("survived");
        let started = std::time::Instant::now();
        let run = run_hook(
            HookName::PostInstall,
            &hook(
                &format!("(sleep 3; touch {}) & sleep 30", flag.display()),
                "1s",
            ),
            vec![],
        )
        .await;
        assert!(!run.succeeded && run.exit_code.is_none());
        assert!(run.output.contains("time limit of 1s"), "{}", run.output);
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!flag.exists(), "the hook's child was killed with it");
    }

    #[test]
    fn output_keeps_the_last_lines_within_the_bound() {
        let many: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = output_tail(many.as_bytes());
        assert!(t.starts_with("line 80") && t.ends_with("line 99"), "{t}");
        let long = "x".repeat(10_000);
        assert_eq!(output_tail(long.as_bytes()).len(), bounds::HOOK_OUTPUT);
        assert_eq!(output_tail(b"a\x1b[31mb\n"), "a?[31mb");
    }
}
