//! The layering rules, kept by a test rather than by good intentions.
//!
//! Two rules of ARCHITECTURE.md are cheap to break by one `use` line and
//! expensive to notice later, so they are checked here on the source itself:
//!
//! - **Pure modules stay pure.** The coordinator's `render`, `validate`,
//!   `consensus` and `flapping`, the check crate's `classify` and the protocol
//!   crate's `convert` decide things from values; they read no store, talk to
//!   no hub or admin API, and do no I/O (no `tokio`, `std::fs`, `std::net`,
//!   `sled`, `tonic`). That is what lets them be tested with plain values and
//!   reused wherever a decision is needed (the CLI, the benchmarks, a second
//!   coordinator). Only their non-test source is read: `tests.rs` and
//!   `*_tests.rs` files and a test module are skipped. A few uses are types
//!   only and allowed by name in [`ALLOWED`], each with its reason.
//! - **The check crate does not know the protocol.** Its manifest lists no
//!   `portwatch-proto`; the conversions live in `portwatch_proto::convert`.
//!
//! The scanner is a small tokenizer, not a regular expression: it skips
//! comments and string literals, expands `use` trees (`use std::{fs, net}`),
//! and follows paths in code (`tokio::spawn`). Its own test below feeds it the
//! forms it must catch and the ones it must not.

use std::path::{Path, PathBuf};

/// Path prefixes a pure module must not name (a path matches a prefix when it
/// is the prefix or continues it with `::`).
const FORBIDDEN: &[&str] = &[
    "crate::store",
    "crate::hub",
    "crate::admin",
    "tokio",
    "std::fs",
    "std::net",
    "sled",
    "tonic",
];

/// Types-only uses that are allowed: (file, path, why).
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "crates/coordinator/src/validate.rs",
        "tonic::Status",
        "the admin API's error type, which a `FieldError` becomes; no transport",
    ),
    (
        "crates/coordinator/src/validate.rs",
        "std::net::IpAddr",
        "an address value inside `Host::Ip`; no socket",
    ),
    (
        "crates/coordinator/src/render.rs",
        "crate::store::FlapTerms",
        "a record (a prost message) the flapping notice quotes; no store handle",
    ),
    (
        "crates/coordinator/src/render.rs",
        "crate::store::RegionOutage",
        "a record (a prost message) the region notices quote; no store handle",
    ),
];

/// The pure modules: a crate's `src/` directory and the module's name; the
/// module is `NAME.rs` (or `NAME/mod.rs`) and every file under `NAME/`.
const PURE: &[(&str, &str)] = &[
    ("crates/coordinator/src", "render"),
    ("crates/coordinator/src", "validate"),
    ("crates/coordinator/src", "consensus"),
    ("crates/coordinator/src", "flapping"),
    ("crates/check/src", "classify"),
    ("crates/proto/src", "convert"),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The files of a module, test files left out; panics when the module is gone,
/// so a rename makes this test fail instead of pass by checking nothing.
fn module_files(src: &str, name: &str) -> Vec<String> {
    let root = workspace();
    let mut files = Vec::new();
    for main in [format!("{src}/{name}.rs"), format!("{src}/{name}/mod.rs")] {
        if root.join(&main).is_file() {
            files.push(main);
        }
    }
    assert!(
        !files.is_empty(),
        "{src}/{name}.rs is gone: update PURE in {}",
        file!()
    );
    let mut dirs = vec![format!("{src}/{name}")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{dir}/{file_name}");
            if entry.path().is_dir() {
                dirs.push(rel);
            } else if file_name.ends_with(".rs")
                && file_name != "mod.rs"
                && file_name != "tests.rs"
                && !file_name.ends_with("_tests.rs")
            {
                files.push(rel);
            }
        }
    }
    files.sort();
    files
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Other,
}

/// Tokens with their line numbers; comments, string and char literals dropped.
fn tokens(src: &str) -> Vec<(usize, Tok)> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            i += 2;
            while i < c.len() && !(c[i] == '*' && at(i + 1) == '/') {
                line += usize::from(c[i] == '\n');
                i += 1;
            }
            i += 2;
        } else if ch == 'r' && (at(i + 1) == '"' || (at(i + 1) == '#' && at(i + 2) != '[')) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at(j) != '"' {
                out.push((line, Tok::Ident("r".into())));
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
                    j += 1 + hashes;
                    break;
                }
                line += usize::from(c[j] == '\n');
                j += 1;
            }
            i = j;
        } else if ch == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                line += usize::from(at(i) == '\n');
                i += 1;
            }
            i += 1;
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            out.push((line, Tok::Ident(c[start..i].iter().collect())));
        } else if ch == ':' && at(i + 1) == ':' {
            out.push((line, Tok::PathSep));
            i += 2;
        } else {
            out.push((
                line,
                match ch {
                    '{' => Tok::Open,
                    '}' => Tok::Close,
                    ',' => Tok::Comma,
                    ';' => Tok::Semi,
                    _ => Tok::Other,
                },
            ));
            i += 1;
        }
    }
    out
}

/// Drops a test module: `#[cfg(test)] mod x;` (a file, skipped on its own) or
/// `#[cfg(test)] mod x { .. }` (inline; by convention the end of the file, so
/// everything from there on is dropped).
fn without_tests(src: &str) -> String {
    let lines: Vec<&str> = src.lines().collect();
    let mut kept = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "#[cfg(test)]" {
            let mut j = i + 1;
            while j < lines.len() && lines[j].trim_start().starts_with("#[") {
                j += 1;
            }
            let item = lines.get(j).map_or("", |l| l.trim());
            let is_mod = item.starts_with("mod ") || item.starts_with("pub mod ");
            if is_mod && item.ends_with(';') {
                // Keep the line count, so reported line numbers stay true.
                kept.extend(std::iter::repeat_n("", j + 1 - i));
                i = j + 1;
                continue;
            }
            if is_mod {
                break;
            }
        }
        kept.push(lines[i]);
        i += 1;
    }
    kept.join("\n")
}

/// Every path the source names, with its line: `use` trees expanded, and the
/// longest `a::b::c` runs elsewhere.
fn paths(src: &str) -> Vec<(usize, String)> {
    let toks = tokens(src);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].1 {
            Tok::Ident(w) if w == "use" => {
                let end = toks[i..]
                    .iter()
                    .position(|(_, t)| *t == Tok::Semi)
                    .map_or(toks.len(), |p| i + p);
                use_tree(&toks[i + 1..end], &mut out);
                i = end;
            }
            Tok::Ident(_) | Tok::PathSep => {
                let line = toks[i].0;
                let mut parts: Vec<&str> = Vec::new();
                while let Some((_, t)) = toks.get(i) {
                    match t {
                        Tok::Ident(w) => parts.push(w),
                        Tok::PathSep => {}
                        _ => break,
                    }
                    let next_is_sep = matches!(toks.get(i + 1), Some((_, Tok::PathSep)));
                    let this_is_sep = matches!(t, Tok::PathSep);
                    i += 1;
                    if !this_is_sep && !next_is_sep {
                        break;
                    }
                }
                if !parts.is_empty() {
                    out.push((line, parts.join("::")));
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into full paths.
fn use_tree(toks: &[(usize, Tok)], out: &mut Vec<(usize, String)>) {
    let mut prefixes: Vec<String> = vec![String::new()];
    let mut current = String::new();
    let mut line = toks.first().map_or(0, |t| t.0);
    let flush = |current: &mut String, prefixes: &[String], line: usize, out: &mut Vec<_>| {
        if !current.is_empty() {
            let prefix = prefixes.last().cloned().unwrap_or_default();
            let path = if prefix.is_empty() {
                current.clone()
            } else if current == "self" {
                prefix
            } else {
                format!("{prefix}::{current}")
            };
            out.push((line, path));
        }
        current.clear();
    };
    let mut skip_alias = false;
    for (l, t) in toks {
        match t {
            Tok::Ident(w) if w == "as" => skip_alias = true,
            Tok::Ident(w) => {
                if skip_alias {
                    skip_alias = false;
                    continue;
                }
                if current.is_empty() {
                    line = *l;
                    current = w.clone();
                } else {
                    current = format!("{current}::{w}");
                }
            }
            Tok::PathSep => {}
            Tok::Open => {
                let prefix = prefixes.last().cloned().unwrap_or_default();
                let joined = match (prefix.is_empty(), current.is_empty()) {
                    (true, _) => current.clone(),
                    (false, true) => prefix,
                    (false, false) => format!("{prefix}::{current}"),
                };
                prefixes.push(joined);
                current.clear();
            }
            Tok::Close => {
                flush(&mut current, &prefixes, line, out);
                prefixes.pop();
            }
            Tok::Comma => flush(&mut current, &prefixes, line, out),
            Tok::Semi | Tok::Other => {}
        }
    }
    flush(&mut current, &prefixes, line, out);
}

fn forbidden(path: &str) -> Option<&'static str> {
    let path = path.trim_start_matches("::");
    FORBIDDEN
        .iter()
        .find(|p| path == **p || path.starts_with(&format!("{p}::")))
        .copied()
}

/// The violations in one file's source: `file:line: path`.
fn violations(file: &str, src: &str) -> Vec<String> {
    paths(&without_tests(src))
        .into_iter()
        .filter(|(_, path)| forbidden(path).is_some())
        .filter(|(_, path)| !ALLOWED.iter().any(|(f, p, _)| *f == file && p == path))
        .map(|(line, path)| {
            let rule = forbidden(&path).unwrap_or_default();
            format!("{file}:{line}: `{path}` (a pure module names `{rule}`)")
        })
        .collect()
}

#[test]
fn pure_modules_import_no_storage_and_no_io() {
    let mut found = Vec::new();
    let mut scanned = 0;
    for (src, name) in PURE {
        for file in module_files(src, name) {
            let text = std::fs::read_to_string(workspace().join(&file))
                .unwrap_or_else(|e| panic!("reading {file}: {e}"));
            found.extend(violations(&file, &text));
            scanned += 1;
        }
    }
    assert!(scanned >= PURE.len());
    assert!(
        found.is_empty(),
        "storage or I/O in a pure module (see ARCHITECTURE.md, layering; a types-only \
         use may be allowed in ALLOWED with its reason):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_allowed_use_is_still_there() {
    // An exception that no longer matches anything is dead weight that would
    // let the same path back in unnoticed later.
    for (file, path, why) in ALLOWED {
        let text = std::fs::read_to_string(workspace().join(file))
            .unwrap_or_else(|e| panic!("reading {file}: {e}"));
        let named = paths(&without_tests(&text))
            .into_iter()
            .any(|(_, p)| p == *path);
        assert!(
            named,
            "{file} no longer uses `{path}` ({why}): drop it from ALLOWED"
        );
    }
}

#[test]
fn the_check_crate_does_not_depend_on_the_protocol() {
    let file = "crates/check/Cargo.toml";
    let text = std::fs::read_to_string(workspace().join(file))
        .unwrap_or_else(|e| panic!("reading {file}: {e}"));
    let manifest: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{file} is not TOML: {e}"));
    let mut tables: Vec<(String, &toml::Table)> = Vec::new();
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(t) = manifest.get(section).and_then(|v| v.as_table()) {
            tables.push((section.to_string(), t));
        }
    }
    if let Some(targets) = manifest.get("target").and_then(|v| v.as_table()) {
        for (cfg, target) in targets {
            for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
                if let Some(t) = target.get(section).and_then(|v| v.as_table()) {
                    tables.push((format!("target.{cfg}.{section}"), t));
                }
            }
        }
    }
    assert!(!tables.is_empty(), "{file} has no dependencies at all?");
    for (section, deps) in tables {
        for (name, spec) in deps {
            let package = spec.get("package").and_then(|p| p.as_str()).unwrap_or(name);
            assert_ne!(
                package, "portwatch-proto",
                "{file} [{section}] lists portwatch-proto: the check crate must not know the \
                 protocol (conversions belong in portwatch_proto::convert)"
            );
        }
    }
}

#[test]
fn the_scanner_sees_what_it_must_and_nothing_else() {
    let src = r#"
//! Mentions tokio and std::fs in a doc comment only.
use std::{collections::HashMap, fs, net::TcpStream};
use crate::{consensus, store::Store as S};
use sled;
fn f() -> String {
    let s = "tokio::spawn in a string";
    let c = '{';
    tokio::spawn(async {});
    ::std::net::UdpSocket::bind("x");
    /* crate::hub::Hub in a block comment */
    format!("{s}{c}")
}
fn g<'a>(x: &'a str) -> &'a str { x }
#[cfg(test)]
mod tests;
fn after_test_file_module() { crate::admin::AdminApi::new(); }
#[cfg(test)]
mod tests_inline {
    use tokio::net::TcpListener;
}
"#;
    let found: Vec<String> = violations("x.rs", src)
        .into_iter()
        .map(|v| v.split(": `").nth(1).unwrap_or_default().to_string())
        .collect();
    let expect = [
        "std::fs` (a pure module names `std::fs`)",
        "std::net::TcpStream` (a pure module names `std::net`)",
        "crate::store::Store` (a pure module names `crate::store`)",
        "sled` (a pure module names `sled`)",
        "tokio::spawn` (a pure module names `tokio`)",
        "std::net::UdpSocket::bind` (a pure module names `std::net`)",
        "crate::admin::AdminApi::new` (a pure module names `crate::admin`)",
    ];
    assert_eq!(found, expect);
    let lines: Vec<usize> = violations("x.rs", src)
        .iter()
        .filter_map(|v| v.split(':').nth(1)?.parse().ok())
        .collect();
    assert_eq!(lines, [3, 3, 4, 5, 9, 10, 17]);
}
