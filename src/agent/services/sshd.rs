//! sshd's dialect: the first value of a keyword wins, `Include` is followed in place, `Match`
//! blocks are conditional.

use std::path::Path;

use super::files::{glob, mode_of, write_file};
use crate::agent::exec;

/// Whether a (trimmed) sshd_config line sets `keyword`.
pub fn sets(line: &str, keyword: &str) -> bool {
    !line.starts_with('#')
        && line
            .split(|c: char| c.is_whitespace() || c == '=')
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
}

/// sshd's effective value of a keyword and the file it comes from: the first occurrence wins,
/// `Include` is followed in place, lines after a `Match` are conditional and left out.
pub fn effective(root: &Path, keyword: &str) -> Result<Option<(String, String)>, String> {
    fn walk(
        root: &Path,
        file: &str,
        keyword: &str,
        depth: usize,
    ) -> Result<Option<(String, String)>, String> {
        if depth > 8 {
            return Err(format!("{file}: Include nested too deeply"));
        }
        let text = match std::fs::read_to_string(exec::under(root, file)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && depth > 0 => return Ok(None),
            Err(e) => return Err(format!("cannot read {file} ({e})")),
        };
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let mut words = line.splitn(2, |c: char| c.is_whitespace() || c == '=');
            let (Some(k), rest) = (words.next(), words.next()) else {
                continue;
            };
            let rest = rest.unwrap_or("").trim().trim_start_matches('=').trim();
            if k.eq_ignore_ascii_case("Match") {
                return Ok(None);
            }
            if k.eq_ignore_ascii_case("Include") {
                for pattern in rest.split_whitespace() {
                    let pattern = if pattern.starts_with('/') {
                        pattern.to_string()
                    } else {
                        format!("/etc/ssh/{pattern}")
                    };
                    for f in glob(root, &pattern) {
                        if let Some(found) = walk(root, &f, keyword, depth + 1)? {
                            return Ok(Some(found));
                        }
                    }
                }
                continue;
            }
            if k.eq_ignore_ascii_case(keyword) {
                let v = rest.split_whitespace().next().unwrap_or("").to_string();
                return Ok(Some((v, file.to_string())));
            }
        }
        Ok(None)
    }
    walk(root, "/etc/ssh/sshd_config", keyword, 0)
}

/// Make sshd_config read the drop-in directory (Debian's does; older images may not).
pub fn ensure_include(root: &Path) -> Result<(), String> {
    let path = exec::under(root, "/etc/ssh/sshd_config");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read /etc/ssh/sshd_config ({e})"))?;
    let reads = text.lines().any(|l| {
        let l = l.trim();
        l.to_ascii_lowercase().starts_with("include") && l.contains("sshd_config.d/")
    });
    if reads {
        return Ok(());
    }
    let mode = mode_of(&path).unwrap_or(0o600);
    write_file(
        &path,
        &format!(
            "# Added by automend: read the drop-in directory first.\nInclude /etc/ssh/sshd_config.d/*.conf\n{text}"
        ),
        mode,
    )
}
