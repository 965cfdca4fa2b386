//! Text from guests (and anything else a user did not write) made safe to show: control
//! characters replaced, length bounded on a character boundary with a visible marker.

/// Events' notes are limited to 1024 bytes by the API server.
pub const EVENT_NOTE: usize = 1024;
/// What a status message or a condition message may hold.
pub const MESSAGE: usize = 2048;

/// Replace control characters (a raw `\r`, escape sequences, NUL...) by a space, so that text
/// reaches logs, terminals and tables as one line of printable characters.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// At most `max` bytes, cut on a character boundary; a cut text ends with "… (N more bytes)"
/// when that fits.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let boundary = |mut end: usize| {
        while end > 0 && !text.is_char_boundary(end) {
            end -= 1;
        }
        end
    };
    // The marker's length depends on the number; measure it with the whole length (an upper bound).
    let marker_len = format!("… ({} more bytes)", text.len()).len();
    if marker_len >= max {
        return text[..boundary(max)].to_string();
    }
    let end = boundary(max - marker_len);
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

/// Sanitised and clipped.
pub fn safe(text: &str, max: usize) -> String {
    clip(&sanitize(text), max)
}

/// At most `max` items; a cut list says how many were left out in its last item (made by `more`).
pub fn clip_list<T>(mut items: Vec<T>, max: usize, more: impl FnOnce(usize) -> T) -> Vec<T> {
    if items.len() <= max || max == 0 {
        items.truncate(max);
        return items;
    }
    let left_out = items.len() - (max - 1);
    items.truncate(max - 1);
    items.push(more(left_out));
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_spaces() {
        assert_eq!(sanitize("a\rb\nc\u{1b}[31md\0"), "a b c [31md ");
        assert_eq!(sanitize("plain — ünïcode"), "plain — ünïcode");
    }

    #[test]
    fn clipping_respects_the_limit_and_character_boundaries() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(2000); // 4000 bytes
        let c = clip(&long, 1024);
        assert!(c.len() <= 1024, "{}", c.len());
        assert!(c.ends_with("more bytes)"), "{c}");
        assert!(c.starts_with("éé"));
        assert_eq!(clip("abcdefghijklmnopqrstuvwxyz", 4), "abcd");
        for max in 0..40 {
            assert!(clip(&long, max).len() <= max, "max {max}");
        }
        assert_eq!(safe("x\r\ny", 10), "x  y");
    }

    #[test]
    fn lists_keep_a_count_of_what_was_left_out() {
        let l = clip_list((0..10).map(|i| i.to_string()).collect(), 4, |n| {
            format!("+{n}")
        });
        assert_eq!(l, vec!["0", "1", "2", "+7"]);
        let l = clip_list(vec![1, 2], 4, |_| 0);
        assert_eq!(l, vec![1, 2]);
    }
}
