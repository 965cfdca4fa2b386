//! A release's repository snapshot, read without touching the machine's repository
//! configuration: the machine's apt sources (one-line `.list` and deb822 `.sources` files) and
//! dnf repository files, with every source under a snapshot repository pointed at the snapshot's
//! URL. Pure text rewriting; `apt.rs` and `dnf.rs` put the result in a directory of their own.

use crate::api::ReleaseSnapshot;

/// `uri` read from the snapshot: the snapshot URL with whatever follows the repository in `uri`
/// (a dnf baseurl often goes on below it, e.g. `$releasever/BaseOS/$basearch/os/`). None: `uri`
/// is not under any of the snapshot's repositories.
pub fn snapshot_uri(uri: &str, snapshot: &ReleaseSnapshot) -> Option<String> {
    snapshot.repositories.iter().find_map(|r| {
        let repo = r.repository.trim_end_matches('/');
        let rest = uri.strip_prefix(repo)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let rest = rest.trim_start_matches('/');
        let base = r.url.trim_end_matches('/');
        Some(if rest.is_empty() {
            format!("{base}/")
        } else {
            format!("{base}/{rest}")
        })
    })
}

/// An apt sources file with every URI under a snapshot repository replaced by its snapshot
/// URL, in the file's own format: one-line (`deb [options] uri suite components`) or deb822
/// (`URIs:` fields); comments and every other field kept as they are. Also gives the URIs the
/// file now reads from.
pub fn rewrite_apt(text: &str, deb822: bool, snapshot: &ReleaseSnapshot) -> (String, Vec<String>) {
    let mut uris = Vec::new();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let rewritten = if deb822 {
            rewrite_deb822_line(line, snapshot, &mut uris)
        } else {
            rewrite_one_line(line, snapshot, &mut uris)
        };
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    (out, uris)
}

fn rewrite_one_line(
    line: &str,
    snapshot: &ReleaseSnapshot,
    uris: &mut Vec<String>,
) -> Option<String> {
    let body = line.split('#').next().unwrap_or("").trim();
    let (kind, rest) = body.split_once(char::is_whitespace)?;
    if kind != "deb" && kind != "deb-src" {
        return None;
    }
    let rest = rest.trim_start();
    // Options in brackets may hold spaces: `[arch=amd64 signed-by=/x.gpg]`.
    let (options, rest) = match rest.strip_prefix('[') {
        Some(r) => {
            let (o, r) = r.split_once(']')?;
            (format!("[{o}] "), r.trim_start())
        }
        None => (String::new(), rest),
    };
    let (uri, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let new = snapshot_uri(uri, snapshot);
    let used = new.clone().unwrap_or_else(|| uri.to_string());
    if kind == "deb" && !uris.contains(&used) {
        uris.push(used.clone());
    }
    new.map(|n| format!("{kind} {options}{n} {}", tail.trim()))
}

fn rewrite_deb822_line(
    line: &str,
    snapshot: &ReleaseSnapshot,
    uris: &mut Vec<String>,
) -> Option<String> {
    let (key, value) = line.split_once(':')?;
    if line.starts_with([' ', '\t', '#']) || !key.trim().eq_ignore_ascii_case("uris") {
        return None;
    }
    let mut changed = false;
    let new: Vec<String> = value
        .split_whitespace()
        .map(|u| {
            let n = snapshot_uri(u, snapshot);
            changed |= n.is_some();
            let used = n.unwrap_or_else(|| u.to_string());
            if !uris.contains(&used) {
                uris.push(used.clone());
            }
            used
        })
        .collect();
    changed.then(|| format!("{}: {}", key.trim(), new.join(" ")))
}

/// The `--setopt` options that read a dnf repository file's repositories under a snapshot
/// repository from the snapshot: `<id>.baseurl=<snapshot URL>` with its mirror lists cleared. A
/// commented-out `#baseurl=` counts (Rocky and Alma ship their repositories so, with a
/// mirrorlist). Also gives the URLs read.
pub fn dnf_setopts(text: &str, snapshot: &ReleaseSnapshot) -> (Vec<String>, Vec<String>) {
    let mut opts = Vec::new();
    let mut urls = Vec::new();
    let mut section: Option<String> = None;
    let mut done: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(id) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = Some(id.trim().to_string());
            continue;
        }
        let Some(id) = &section else { continue };
        let Some((key, value)) = t.trim_start_matches('#').trim().split_once('=') else {
            continue;
        };
        if key.trim() != "baseurl" || done.as_ref() == Some(id) {
            continue;
        }
        let Some(first) = value
            .split([' ', ','])
            .map(str::trim)
            .find(|u| !u.is_empty())
        else {
            continue;
        };
        if let Some(url) = snapshot_uri(first, snapshot) {
            opts.push(format!("--setopt={id}.baseurl={url}"));
            opts.push(format!("--setopt={id}.mirrorlist="));
            opts.push(format!("--setopt={id}.metalink="));
            urls.push(url);
            done = Some(id.clone());
        }
    }
    (opts, urls)
}

/// The first baseurl of every repository in a dnf repository file (commented ones left out).
pub fn dnf_baseurls(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("baseurl"))
        .filter_map(|r| r.trim_start().strip_prefix('='))
        .filter_map(|v| v.split([' ', ',']).map(str::trim).find(|u| !u.is_empty()))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SnapshotUrl;

    fn snap() -> ReleaseSnapshot {
        ReleaseSnapshot {
            timestamp: "20261110T000000Z".into(),
            repositories: vec![
                SnapshotUrl {
                    repository: "http://deb.debian.org/debian".into(),
                    url: "https://snapshot.debian.org/archive/debian/20261110T000000Z/".into(),
                },
                SnapshotUrl {
                    repository: "http://dl.rockylinux.org/pub/rocky/".into(),
                    url: "https://snap.example/rocky/20261110T000000Z".into(),
                },
            ],
        }
    }

    #[test]
    fn uris_under_a_repository_move_to_its_snapshot() {
        let s = snap();
        assert_eq!(
            snapshot_uri("http://deb.debian.org/debian", &s).as_deref(),
            Some("https://snapshot.debian.org/archive/debian/20261110T000000Z/")
        );
        assert_eq!(
            snapshot_uri(
                "http://dl.rockylinux.org/pub/rocky/$releasever/BaseOS/$basearch/os/",
                &s
            )
            .as_deref(),
            Some("https://snap.example/rocky/20261110T000000Z/$releasever/BaseOS/$basearch/os/")
        );
        // A sibling that only shares a prefix is not under it.
        assert_eq!(
            snapshot_uri("http://deb.debian.org/debian-security", &s),
            None
        );
        assert_eq!(snapshot_uri("http://security.debian.org/", &s), None);
    }

    #[test]
    fn one_line_sources_keep_options_suites_and_comments() {
        let text = "# Debian 12\ndeb [arch=amd64 signed-by=/usr/share/keyrings/d.gpg] http://deb.debian.org/debian bookworm main contrib\ndeb http://security.debian.org/debian-security bookworm-security main\ndeb-src http://deb.debian.org/debian bookworm main\n";
        let (out, uris) = rewrite_apt(text, false, &snap());
        assert_eq!(
            out,
            "# Debian 12\ndeb [arch=amd64 signed-by=/usr/share/keyrings/d.gpg] https://snapshot.debian.org/archive/debian/20261110T000000Z/ bookworm main contrib\ndeb http://security.debian.org/debian-security bookworm-security main\ndeb-src https://snapshot.debian.org/archive/debian/20261110T000000Z/ bookworm main\n"
        );
        assert_eq!(
            uris,
            [
                "https://snapshot.debian.org/archive/debian/20261110T000000Z/",
                "http://security.debian.org/debian-security"
            ]
        );
    }

    #[test]
    fn deb822_sources_rewrite_only_their_uris() {
        let text = "Types: deb\nURIs: http://deb.debian.org/debian http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
        let (out, uris) = rewrite_apt(text, true, &snap());
        assert!(out.contains("URIs: https://snapshot.debian.org/archive/debian/20261110T000000Z/ http://mirror.example/debian\n"), "{out}");
        assert!(out.contains("Suites: bookworm bookworm-updates\n") && out.contains("Signed-By:"));
        assert_eq!(uris.len(), 2);
    }

    #[test]
    fn dnf_repositories_are_pointed_at_the_snapshot_by_setopt() {
        let text = "[baseos]\nname=Rocky Linux $releasever - BaseOS\nmirrorlist=https://mirrors.rockylinux.org/mirrorlist?arch=$basearch&repo=BaseOS-$releasever\n#baseurl=http://dl.rockylinux.org/pub/rocky/$releasever/BaseOS/$basearch/os/\ngpgcheck=1\n\n[epel]\nbaseurl=https://dl.fedoraproject.org/pub/epel/9/\n";
        let (opts, urls) = dnf_setopts(text, &snap());
        assert_eq!(
            opts,
            [
                "--setopt=baseos.baseurl=https://snap.example/rocky/20261110T000000Z/$releasever/BaseOS/$basearch/os/",
                "--setopt=baseos.mirrorlist=",
                "--setopt=baseos.metalink=",
            ]
        );
        assert_eq!(urls.len(), 1);
    }
}
