//! Text the target controls (process names, paths, symbols, socket and file
//! details, Go versions), made safe to show on a terminal: control characters
//! and the invisible ones that reorder or hide text are shown escaped (`\x1b`,
//! `\u{202e}`), so a target cannot move the cursor, clear the screen or forge
//! lines of the report. JSON and pprof keep the text as it is (their encoders
//! escape what their formats need).
use std::borrow::Cow;

/// `s` with every character a terminal would act on, or that hides or
/// reorders text, replaced by its escape.
pub fn shown(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !needs_escape(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            // zero-width characters and marks, bidirectional embeddings,
            // overrides and isolates ("Trojan Source")
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_shown_escaped() {
        assert_eq!(shown("malloc"), "malloc");
        assert!(matches!(shown("ünïcode ✓"), Cow::Borrowed(_)));
        assert_eq!(shown("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(shown("line\nforged"), "line\\x0aforged");
        assert_eq!(shown("\u{9b}31m"), "\\x9b31m");
        assert_eq!(shown("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(shown("del\x7f"), "del\\x7f");
    }
}
