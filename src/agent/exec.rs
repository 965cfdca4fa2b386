//! Running the machine's own tools (apt-get, dpkg-query, dnf, rpm, systemctl, sysctl) with a time
//! limit, a clean environment and errors that name the command and quote what it said.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// What a finished command printed.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last lines of stderr (else stdout), for an error message.
    pub fn tail(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(4)..].join(" / ")
    }
}

/// A command line, for messages.
pub fn show(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run a program; `Err` only when it could not run or ran past `limit` (then it is killed).
pub async fn run(
    program: &str,
    args: &[String],
    env: &[(&str, &str)],
    limit: Duration,
) -> Result<Output, String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "{} did not finish within {}s (stopped)",
            show(program, args),
            limit.as_secs()
        )),
        Ok(Err(e)) => Err(format!("{}: {e}", show(program, args))),
        Ok(Ok(out)) => Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
    }
}

/// Run a program that must succeed.
pub async fn check(
    program: &str,
    args: &[String],
    env: &[(&str, &str)],
    limit: Duration,
) -> Result<Output, String> {
    let out = run(program, args, env, limit).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(format!(
            "{} failed (exit {}): {}",
            show(program, args),
            out.code.map_or("signal".to_string(), |c| c.to_string()),
            out.tail()
        ))
    }
}

/// `path` inside `root` (`/etc/x` under `/srv/guest` is `/srv/guest/etc/x`).
pub fn under(root: &Path, path: &str) -> std::path::PathBuf {
    root.join(path.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_name_the_command_and_quote_it() {
        let e = check(
            "sh",
            &["-c".into(), "echo one >&2; echo two >&2; exit 3".into()],
            &[],
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(
            e.contains("sh -c") && e.contains("exit 3") && e.contains("one / two"),
            "{e}"
        );
        let e = run("/nonexistent/tool", &[], &[], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.contains("cannot run /nonexistent/tool"), "{e}");
        let e = run("sleep", &["5".into()], &[], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
    }

    #[test]
    fn paths_are_taken_inside_the_root() {
        assert_eq!(
            under(Path::new("/srv/g"), "/etc/ssh/sshd_config"),
            Path::new("/srv/g/etc/ssh/sshd_config")
        );
        assert_eq!(under(Path::new("/"), "/etc/x"), Path::new("/etc/x"));
    }
}
