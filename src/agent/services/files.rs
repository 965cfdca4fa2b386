//! File helpers of the services: atomic writes, globs, modes, first differences, and commenting
//! out an overriding line in a configuration dialect.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::agent::exec;

/// A file's permission bits (None when it cannot be read).
pub fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// The first line where `have` differs from `want`, for a drift report.
pub fn first_difference(want: &str, have: &str) -> String {
    let (w, h): (Vec<&str>, Vec<&str>) = (want.lines().collect(), have.lines().collect());
    for i in 0..w.len().max(h.len()) {
        match (w.get(i), h.get(i)) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) => return format!("line {}: want {a:?}, have {b:?}", i + 1),
            (Some(a), None) => return format!("line {}: want {a:?}, missing", i + 1),
            (None, Some(b)) => return format!("line {}: unexpected {b:?}", i + 1),
            (None, None) => break,
        }
    }
    "content differs (line endings)".into()
}

/// Write a file atomically (temporary file + rename) with its mode; directories are created.
pub fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.automend-tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::write(&tmp, content).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))
}

/// Files matching a pattern whose last component may hold `*` (sorted, as glob(3) does).
pub fn glob(root: &Path, pattern: &str) -> Vec<String> {
    let (dir, file) = pattern.rsplit_once('/').unwrap_or((".", pattern));
    if !file.contains('*') {
        return vec![pattern.to_string()];
    }
    let (pre, post) = file.split_once('*').unwrap_or((file, ""));
    let Ok(entries) = std::fs::read_dir(exec::under(root, dir)) else {
        return vec![];
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(pre) && n.ends_with(post) && n.len() >= pre.len() + post.len())
        .collect();
    names.sort();
    names.into_iter().map(|n| format!("{dir}/{n}")).collect()
}

/// Comment out the lines of `file` that set `key` in its dialect (`sets(line, key)`), as
/// `# automend: <line>`, keeping the text.
pub fn comment_out(
    root: &Path,
    file: &str,
    key: &str,
    sets: fn(&str, &str) -> bool,
) -> Result<(), String> {
    let path = exec::under(root, file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {file} ({e})"))?;
    let mut changed = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if sets(l.trim(), key) {
                changed = true;
                format!("# automend: {l}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !changed {
        return Err(format!("{file}: no line setting {key} to comment out"));
    }
    write_file(
        &path,
        &(lines.join("\n") + "\n"),
        mode_of(&path).unwrap_or(0o644),
    )
}
