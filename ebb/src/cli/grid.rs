//! Tables for people that fit the terminal: columns wrap to its width (comfy-table's dynamic
//! arrangement), long JSON columns are summarised and some columns are left out, unless
//! `-o wide` asks for everything on unbroken lines.
//!
//! The width is `COLUMNS` when set, else the terminal's when standard output is one; piped
//! output has no width, so its lines are not broken.

use std::fmt;
use std::io::IsTerminal;

use comfy_table::{ContentArrangement, Table, presets};

use super::mode::{self, Output};

/// Characters a summarised column keeps before `…`.
const SUMMARY_CHARS: usize = 40;

/// A table being filled; printed with `Display`.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    header: Vec<String>,
    wide_only: Vec<bool>,
    summarised: Vec<bool>,
    rows: Vec<Vec<String>>,
}

/// A table with these column names.
pub fn table(header: &[&str]) -> Grid {
    Grid {
        header: header.iter().map(|h| (*h).to_owned()).collect(),
        wide_only: vec![false; header.len()],
        summarised: vec![false; header.len()],
        rows: Vec::new(),
    }
}

impl Grid {
    /// Adds a row, one cell per column.
    pub fn add_row(&mut self, row: Vec<String>) -> &mut Self {
        self.rows.push(row);
        self
    }

    /// These columns are only shown with `-o wide`.
    pub fn wide_only(mut self, columns: &[&str]) -> Self {
        self.mark(columns, |g, i| g.wide_only[i] = true);
        self
    }

    /// These columns (JSON, free text) are cut to their first characters, except with
    /// `-o wide`.
    pub fn summarise(mut self, columns: &[&str]) -> Self {
        self.mark(columns, |g, i| g.summarised[i] = true);
        self
    }

    fn mark(&mut self, columns: &[&str], set: impl Fn(&mut Self, usize)) {
        for c in columns {
            if let Some(i) = self.header.iter().position(|h| h == c) {
                set(self, i);
            }
        }
    }
}

impl fmt::Display for Grid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = mode::mode();
        let wide = mode.output == Output::Wide;
        let keep: Vec<usize> = (0..self.header.len())
            .filter(|&i| wide || !self.wide_only[i])
            .collect();
        let mut t = new_table(wide);
        if mode.no_headers {
            // Bare columns, for `awk` and `cut`.
            t.load_preset(presets::NOTHING);
        } else {
            t.set_header(keep.iter().map(|&i| self.header[i].clone()));
        }
        for row in &self.rows {
            t.add_row(keep.iter().map(|&i| {
                let cell = row.get(i).cloned().unwrap_or_default();
                if self.summarised[i] && !wide {
                    summary(&cell, SUMMARY_CHARS)
                } else {
                    cell
                }
            }));
        }
        write!(f, "{t}")
    }
}

/// A comfy-table in the style of every `ebb` table, arranged to the terminal's width unless
/// `wide`.
pub fn new_table(wide: bool) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED);
    match width().filter(|_| !wide) {
        Some(w) => {
            t.set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(w);
        }
        None => {
            t.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    t
}

/// The width tables must fit: `COLUMNS`, else the terminal's when standard output is one.
pub fn width() -> Option<u16> {
    if let Some(cols) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<u16>().ok())
        .filter(|c| *c > 0)
    {
        return Some(cols);
    }
    if std::io::stdout().is_terminal() {
        console::Term::stdout().size_checked().map(|(_, cols)| cols)
    } else {
        None
    }
}

/// `text` cut to `max` characters with `…`, on one line.
pub fn summary(text: &str, max: usize) -> String {
    let line = text.replace('\n', " ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_cut_long_text_only() {
        assert_eq!(summary("short", 10), "short");
        assert_eq!(summary("{\"a\":1,\n\"b\":2}", 40), "{\"a\":1, \"b\":2}");
        let s = summary(&"x".repeat(100), 10);
        assert_eq!(s.chars().count(), 10);
        assert!(s.ends_with('…'));
    }
}
