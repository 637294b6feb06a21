//! Man pages of the three portwatch binaries (`portwatch`,
//! `portwatch-coordinator`, `portwatch-agent`), generated from their clap
//! definitions, so a page can never disagree with what the binary accepts.
//!
//! On top of what `clap_mangen` renders (NAME, SYNOPSIS, DESCRIPTION, OPTIONS,
//! SUBCOMMANDS, VERSION), every page has:
//! - **EXIT STATUS**, from the binary's own table of exit codes;
//! - **ENVIRONMENT**: every flag's environment variable (collected from the
//!   command, global flags included), then the extra variables the binary names
//!   (`NO_COLOR`, secrets read outside a flag);
//! - the `after_help` text split into sections at lines such as `Examples:`
//!   (→ EXAMPLES); an `Exit codes:` block is left out, EXIT STATUS has it.

use std::io;
use std::path::{Path, PathBuf};

use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

/// What a page says beyond the command's own definition.
#[derive(Clone, Copy, Debug)]
pub struct Extras<'a> {
    /// The manual section: "1" for user commands, "8" for daemons.
    pub section: &'a str,
    /// (exit code, meaning), in order.
    pub exit_status: &'a [(&'a str, &'a str)],
    /// (variable, meaning) beyond the flags' own variables.
    pub environment: &'a [(&'a str, &'a str)],
}

/// The page of `cmd` alone (its subcommands are listed, not described).
pub fn render(cmd: clap::Command, extras: &Extras) -> io::Result<Vec<u8>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    page(cmd, extras)
}

/// One page per command and (visible) subcommand into `dir`: `portwatch.1`,
/// `portwatch-monitor-add.1`, ...; returns the files written, sorted.
pub fn generate_to(cmd: clap::Command, dir: &Path, extras: &Extras) -> io::Result<Vec<PathBuf>> {
    fn walk(
        cmd: clap::Command,
        dir: &Path,
        extras: &Extras,
        out: &mut Vec<PathBuf>,
    ) -> io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, dir, extras, out)?;
        }
        let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
        let path = dir.join(format!("{name}.{}", extras.section));
        std::fs::write(&path, page(cmd, extras)?)?;
        out.push(path);
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, dir, extras, &mut out)?;
    out.sort();
    Ok(out)
}

/// A built command's page.
fn page(cmd: clap::Command, extras: &Extras) -> io::Result<Vec<u8>> {
    let after_help = cmd.get_after_help().map(|h| h.to_string());
    let env = environment(&cmd, extras);
    let has_args = cmd
        .get_arguments()
        .any(|a| !a.is_hide_set() && !a.is_positional())
        || cmd.get_positionals().any(|a| !a.is_hide_set());
    let has_subcommands = cmd.get_subcommands().any(|s| !s.is_hide_set());
    let has_version = cmd.get_version().is_some();
    let man = Man::new(cmd).section(extras.section);

    // Each part renders its own copy of roff's preamble; keep the first.
    let preamble = Roff::new().render();
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let part = |f: &dyn Fn(&mut Vec<u8>) -> io::Result<()>| -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        f(&mut buf)?;
        Ok(buf)
    };
    parts.push(part(&|w| man.render_title(w))?);
    parts.push(part(&|w| man.render_name_section(w))?);
    parts.push(part(&|w| man.render_synopsis_section(w))?);
    parts.push(part(&|w| man.render_description_section(w))?);
    if has_args {
        parts.push(part(&|w| man.render_options_section(w))?);
    }
    if has_subcommands {
        parts.push(part(&|w| man.render_subcommands_section(w))?);
    }
    let mut roff = Roff::new();
    if let Some(text) = &after_help {
        help_sections(&mut roff, text);
    }
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in extras.exit_status {
        roff.control("TP", []);
        roff.text([bold(*code)]);
        roff.text([roman(*meaning)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (name, meaning) in &env {
        roff.control("TP", []);
        roff.text([bold(name.as_str())]);
        roff.text([roman(meaning.as_str())]);
    }
    parts.push(roff.render().into_bytes());
    if has_version {
        parts.push(part(&|w| man.render_version_section(w))?);
    }

    let mut out = Vec::new();
    for (i, p) in parts.into_iter().enumerate() {
        let body = match (i, p.strip_prefix(preamble.as_bytes())) {
            (0, _) | (_, None) => &p[..],
            (_, Some(rest)) => rest,
        };
        out.extend_from_slice(body);
    }
    Ok(out)
}

/// Every environment variable of the command's flags (with the flag's help),
/// then the extras; each variable once.
fn environment(cmd: &clap::Command, extras: &Extras) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let Some(var) = arg.get_env() else { continue };
        let var = var.to_string_lossy().into_owned();
        if out.iter().any(|(v, _)| *v == var) {
            continue;
        }
        let flag = arg
            .get_long()
            .map(|l| format!("--{l}"))
            .unwrap_or_else(|| arg.get_id().to_string());
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        out.push((var, format!("{flag}: {help}")));
    }
    for (var, meaning) in extras.environment {
        if !out.iter().any(|(v, _)| v == var) {
            out.push((var.to_string(), meaning.to_string()));
        }
    }
    out
}

/// `after_help` as sections: a line "Examples:" starts EXAMPLES; lines
/// indented by two spaces are kept as they are (commands), other lines are
/// prose. The "Exit codes:" block is skipped: EXIT STATUS has it.
fn help_sections(roff: &mut Roff, text: &str) {
    let mut skipping = false;
    let mut in_section = false;
    for line in text.lines() {
        let title = line
            .strip_suffix(':')
            .filter(|t| !t.starts_with(' ') && !t.is_empty() && !t.contains("  "));
        if let Some(title) = title {
            skipping = title.eq_ignore_ascii_case("exit codes");
            if !skipping {
                roff.control("SH", [title.to_uppercase().as_str()]);
                in_section = true;
            }
            continue;
        }
        if skipping {
            continue;
        }
        if !in_section {
            roff.control("SH", ["NOTES"]);
            in_section = true;
        }
        if line.trim().is_empty() {
            roff.control("PP", []);
        } else if let Some(code) = line.strip_prefix("  ") {
            // One command per line, as typed.
            roff.control("nf", []);
            roff.text([roman(code)]);
            roff.control("fi", []);
        } else {
            roff.text([roman(line)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    const EXTRAS: Extras = Extras {
        section: "8",
        exit_status: &[("0", "stopped cleanly"), ("2", "bad configuration")],
        environment: &[("NO_COLOR", "no colours in logs")],
    };

    fn cmd() -> Command {
        Command::new("demo")
            .version("1.2.3")
            .about("a demo daemon")
            .after_help("Examples:\n  demo --listen 127.0.0.1:1\n\nExit codes:\n  0  done")
            .arg(
                Arg::new("listen")
                    .long("listen")
                    .env("DEMO_LISTEN")
                    .help("where to listen")
                    .global(true),
            )
            .subcommand(Command::new("run").about("runs it"))
    }

    #[test]
    fn pages_have_exit_status_environment_and_examples() {
        let text = String::from_utf8(render(cmd(), &EXTRAS).unwrap()).unwrap();
        for needle in [
            ".TH demo 8",
            ".SH NAME",
            ".SH OPTIONS",
            ".SH EXAMPLES",
            "demo \\-\\-listen 127.0.0.1:1",
            ".SH \"EXIT STATUS\"",
            "bad configuration",
            ".SH ENVIRONMENT",
            "DEMO_LISTEN",
            "\\-\\-listen: where to listen",
            "NO_COLOR",
            ".SH VERSION",
        ] {
            assert!(text.contains(needle), "{needle:?} missing:\n{text}");
        }
        assert!(!text.contains("Exit codes"), "{text}");
        assert_eq!(
            text.matches(".ie \\n(.g").count(),
            1,
            "one preamble:\n{text}"
        );
    }

    #[test]
    fn one_page_per_command_with_the_global_variables() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let pages = generate_to(cmd(), dir, &EXTRAS).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["demo-run.8", "demo.8"]);
        let run = std::fs::read_to_string(dir.join("demo-run.8")).unwrap();
        assert!(run.contains("DEMO_LISTEN"), "{run}");
        assert!(run.contains(".SH \"EXIT STATUS\""), "{run}");
    }
}
