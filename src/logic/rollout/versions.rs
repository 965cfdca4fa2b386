//! Package versions and names: ordering and exclusion patterns.

use std::cmp::Ordering;

/// Compare versions the way package managers roughly do: runs of digits numerically, the rest
/// by character, `~` before everything.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let strip = |d: &[u8]| -> Vec<u8> {
                    d.iter().skip_while(|c| **c == b'0').copied().collect()
                };
                let (sa, sb) = (strip(&a[..na]), strip(&b[..nb]));
                let o = sa.len().cmp(&sb.len()).then_with(|| sa.cmp(&sb));
                if o != Ordering::Equal {
                    return o;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (x, y) => {
                let o = char_key(x).cmp(&char_key(y));
                if o != Ordering::Equal {
                    return o;
                }
                a = &a[1.min(a.len())..];
                b = &b[1.min(b.len())..];
            }
        }
    }
}

fn char_key(c: Option<&u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_digit() => 1,
        Some(c) if c.is_ascii_alphabetic() => 2 + i32::from(*c),
        Some(c) => 300 + i32::from(*c),
    }
}

/// Whether `exclude` (exact names, or prefixes ending in `*`) excludes a package.
pub fn excluded(exclude: &[String], name: &str) -> bool {
    exclude.iter().any(|e| match e.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => e == name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comparison_is_numeric_and_tilde_sorts_first() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("1.10", "1.9"), Greater);
        assert_eq!(compare_versions("2.0~rc1", "2.0"), Less);
        assert_eq!(compare_versions("1.0-1ubuntu2", "1.0-1ubuntu10"), Less);
        assert_eq!(compare_versions("5.2", "5.2"), Equal);
        assert_eq!(compare_versions("001", "1"), Equal);
    }

    #[test]
    fn exclusions_match_names_and_prefixes() {
        let ex = vec!["secret-*".to_string(), "kernel".to_string()];
        assert!(excluded(&ex, "secret-agent"));
        assert!(excluded(&ex, "kernel"));
        assert!(!excluded(&ex, "kernel-tools"));
        assert!(!excluded(&ex, "libssl"));
    }
}
