//! Data on stdout: aligned tables for people (the default on a terminal)
//! or JSON lines for programs (the default when stdout is piped).
//! Diagnostics never come here; they go to stderr.
//!
//! Table cells are made safe for a terminal: text from hosts (paths,
//! command lines, server names) may hold control characters, which are
//! shown escaped rather than sent to the terminal. Colour is one bold
//! header line, and none when `NO_COLOR` is set or stdout is not a terminal.

use std::io::{self, BufWriter, IsTerminal, Stdout, Write};

use serde::Serialize;

use crate::args::FormatArg;

/// How data is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// One JSON object per line.
    Json,
}

/// A thing that prints as one table row.
pub trait Row: Serialize {
    /// The column headers.
    const HEADERS: &'static [&'static str];
    /// The cells, one per header.
    fn cells(&self) -> Vec<String>;
}

/// Where data goes.
#[derive(Debug)]
pub struct Output {
    format: Format,
    color: bool,
    out: BufWriter<Stdout>,
    headers: &'static [&'static str],
    rows: Vec<Vec<String>>,
    items: usize,
}

/// Whether `NO_COLOR` asks for no colour (set and not empty, per no-color.org).
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty())
}

impl Output {
    /// Output in `format`, or the default for where stdout goes.
    pub fn new(format: Option<FormatArg>) -> Self {
        let terminal = io::stdout().is_terminal();
        let format = match format {
            Some(FormatArg::Table) => Format::Table,
            Some(FormatArg::Json) => Format::Json,
            None if terminal => Format::Table,
            None => Format::Json,
        };
        let color = format == Format::Table
            && terminal
            && !no_color()
            && std::env::var_os("TERM").is_none_or(|term| term != "dumb");
        Self { format, color, out: BufWriter::new(io::stdout()), headers: &[], rows: Vec::new(), items: 0 }
    }

    /// The format in use.
    pub fn format(&self) -> Format {
        self.format
    }

    /// How many items were printed (or buffered for the table).
    pub fn items(&self) -> usize {
        self.items
    }

    /// One list item: a JSON line, or a table row printed by [`finish`](Self::finish).
    pub fn item<T: Row>(&mut self, item: &T) -> io::Result<()> {
        self.items += 1;
        match self.format {
            Format::Json => self.json_line(item),
            Format::Table => {
                self.headers = T::HEADERS;
                self.rows.push(item.cells().iter().map(|cell| safe(cell)).collect());
                Ok(())
            }
        }
    }

    /// One item printed at once (a live tail): a JSON line, or a table row
    /// with its cells padded to `widths` (the header before the first), then
    /// flushed.
    pub fn live_item<T: Row>(&mut self, item: &T, widths: &[usize]) -> io::Result<()> {
        if self.items == 0 && self.format == Format::Table {
            let header = pad(&T::HEADERS.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(), widths);
            self.write_header(&header)?;
        }
        self.items += 1;
        match self.format {
            Format::Json => self.json_line(item)?,
            Format::Table => {
                let cells: Vec<String> = item.cells().iter().map(|cell| safe(cell)).collect();
                writeln!(self.out, "{}", pad(&cells, widths))?;
            }
        }
        self.out.flush()
    }

    fn write_header(&mut self, header: &str) -> io::Result<()> {
        if self.color { writeln!(self.out, "\x1b[1m{header}\x1b[0m") } else { writeln!(self.out, "{header}") }
    }

    /// One object: a JSON line, or `key: value` lines for the table format.
    pub fn object<T: Serialize>(&mut self, value: &T, fields: &[(&str, String)]) -> io::Result<()> {
        self.items += 1;
        match self.format {
            Format::Json => self.json_line(value),
            Format::Table => {
                let width = fields.iter().map(|(key, _)| key.chars().count()).max().unwrap_or(0);
                for (key, value) in fields {
                    let label = format!("{key}:");
                    let line = format!("{label:<w$} {}", safe(value), w = width + 1);
                    writeln!(self.out, "{}", line.trim_end())?;
                }
                Ok(())
            }
        }
    }

    /// Text printed as is, in the table format only (a policy document).
    pub fn text(&mut self, text: &str) -> io::Result<()> {
        if self.format == Format::Table {
            self.out.write_all(text.as_bytes())?;
            if !text.ends_with('\n') {
                self.out.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    /// A JSON value on one line, whatever the format.
    pub fn json_line<T: Serialize + ?Sized>(&mut self, value: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }

    /// Prints the buffered table and flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        if !self.rows.is_empty() {
            let rows = std::mem::take(&mut self.rows);
            self.write_table(&rows)?;
        }
        self.out.flush()
    }

    fn write_table(&mut self, rows: &[Vec<String>]) -> io::Result<()> {
        let headers = self.headers;
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header = pad(&headers.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(), &widths);
        self.write_header(&header)?;
        for row in rows {
            writeln!(self.out, "{}", pad(row, &widths))?;
        }
        Ok(())
    }
}

/// Cells joined with two spaces, each padded to its column (the last not).
fn pad(cells: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (index, cell) in cells.iter().enumerate() {
        if index > 0 {
            line.push_str("  ");
        }
        line.push_str(cell);
        if index + 1 < cells.len() {
            let width = widths.get(index).copied().unwrap_or(0);
            line.extend(std::iter::repeat_n(' ', width.saturating_sub(cell.chars().count())));
        }
    }
    line.trim_end().to_owned()
}

/// Text with control characters escaped, safe to show on a terminal.
pub fn safe(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| match c {
            '\n' => "\\n".to_owned(),
            '\t' => "\\t".to_owned(),
            '\r' => "\\r".to_owned(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// An optional value for a cell: `-` when absent.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_padded_and_safe() {
        let widths = [4, 3, 9];
        assert_eq!(pad(&["a".to_owned(), "bb".to_owned(), "c".to_owned()], &widths), "a     bb   c");
        assert_eq!(safe("/tmp/\x1b[31mred\n"), "/tmp/\\u{1b}[31mred\\n");
        assert_eq!(safe("plain"), "plain");
        assert_eq!(or_dash(None::<i64>), "-");
        assert_eq!(or_dash(Some(3)), "3");
    }
}
