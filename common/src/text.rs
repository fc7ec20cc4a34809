//! Which characters a name or label may hold, and text made safe for HTML.

/// Whether `c` may not appear in a name, a label or any other short text that people read in
/// lists and logs: control characters, and the invisible characters that reorder or hide what
/// a reader sees (bidirectional overrides and isolates, as in "Trojan Source", CVE-2021-42574;
/// directional marks; zero-width characters; the byte-order mark).
pub fn is_hidden_or_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Whether `text` holds a character [`is_hidden_or_control`] refuses.
pub fn has_hidden_or_control(text: &str) -> bool {
    text.chars().any(is_hidden_or_control)
}

/// `text` with the characters HTML gives meaning to (`& < > " '`) escaped, for element
/// content and quoted attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_and_invisible_characters_are_refused() {
        for text in [
            "prod\u{202E}dlrow",
            "a\u{2066}b",
            "zero\u{200B}width",
            "mark\u{200F}",
            "tab\t",
            "\u{FEFF}bom",
        ] {
            assert!(has_hidden_or_control(text), "{text:?}");
        }
        for text in ["prod", "Zürich 東京", "emoji 🚀", "a-b_c.d"] {
            assert!(!has_hidden_or_control(text), "{text:?}");
        }
    }
}
