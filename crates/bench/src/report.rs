//! How a figure is printed: a table for people, then one JSON line for machines.
//!
//! Every figure prints exactly one JSON object on a line of its own, with a
//! `"bench"` key naming the figure; everything else on stdout is the table.
//! Progress notes go to stderr, so `portwatch-bench | grep '^{'` is the data.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// A table of text cells.
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Table {
        Table {
            title: title.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as aligned text.
    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in width.iter().enumerate() {
                let c = cells.get(i).map_or("", String::as_str);
                let pad = w.saturating_sub(c.chars().count());
                let _ = write!(s, " {c}{} |", " ".repeat(pad));
            }
            s
        };
        let mut out = format!("\n## {}\n\n", self.title);
        out.push_str(&line(&self.headers));
        out.push('\n');
        let mut sep = String::from("|");
        for w in &width {
            let _ = write!(sep, "{}|", "-".repeat(w + 2));
        }
        out.push_str(&sep);
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }
}

/// Prints the table and the figure's JSON line (with `"bench": name` added).
pub fn emit(name: &str, tables: &[Table], json: Value) {
    for t in tables {
        println!("{}", t.render());
    }
    println!("{}", json_line(name, json));
}

/// The JSON line of a figure: `"bench"` first, then the figure's own fields.
pub fn json_line(name: &str, json: Value) -> String {
    let mut fields = match json {
        Value::Object(fields) => fields,
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            m
        }
    };
    fields.remove("bench");
    let head = format!("{{\"bench\":{}", Value::String(name.to_string()));
    let rest = Value::Object(fields).to_string();
    match rest.strip_prefix('{') {
        Some("}") | None => format!("{head}}}"),
        Some(tail) => format!("{head},{tail}"),
    }
}

/// A progress note on stderr.
pub fn note(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// A number with `digits` decimals.
pub fn f(x: f64, digits: usize) -> String {
    format!("{x:.digits$}")
}

/// "yes"/"NO" for a goal.
pub fn met(ok: bool) -> String {
    if ok { "yes".into() } else { "NO".into() }
}
