//! How both daemons read their settings, in one place.
//!
//! A daemon declares each setting once: a field of its clap `Args` struct
//! (doc comment = help text, `long` flag, `env` variable). The same struct,
//! deserialized with serde, is the config file's form, so the file's keys are
//! the flags' names with underscores and a setting cannot exist in one form
//! and be forgotten in the other. Precedence is flag, then environment
//! variable (clap's `env` attribute merges those two), then the file, then the
//! default; [`layer!`] takes one setting from both layers as a [`Setting`],
//! which knows its key and where its value came from, and whose helpers
//! (`duration`, `within`, `required`, ...) give every error the same shape.
//!
//! One error type, [`ConfigError`], names the key, the reason and the source of
//! the bad value: the flag, the environment variable, or the file and line.
//! Merging works on the two layers alone (so it is tested with plain values);
//! [`load`] reads the file and then tells a flag from an environment variable
//! and finds the file line, only for the error it reports.

use std::ffi::OsString;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A flag or its environment variable (which one is found by [`load`]).
    Flags,
    /// The flag, e.g. `--retention`.
    Flag(String),
    /// The environment variable, e.g. `PORTWATCH_RETENTION`.
    Env(String),
    /// The config file, and the line of the key when it was found.
    File {
        path: Option<PathBuf>,
        line: Option<usize>,
    },
    /// Nowhere: the default, or a required setting given by no layer.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flags => f.write_str("from a flag or the environment"),
            Source::Flag(flag) => write!(f, "from {flag}"),
            Source::Env(var) => write!(f, "from {var}"),
            Source::File { path, line } => {
                f.write_str("from the config file")?;
                if let Some(path) = path {
                    write!(f, " {}", path.display())?;
                }
                if let Some(line) = line {
                    write!(f, ", line {line}")?;
                }
                Ok(())
            }
            Source::Default => f.write_str("by default"),
        }
    }
}

/// A configuration error: the key, the reason and where the value came from.
/// The file itself (key `config`: unreadable, not TOML, an unknown key) reads
/// "config file PATH: …", never "config: config: …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(self))]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
    pub origin: Source,
}

fn describe(e: &ConfigError) -> String {
    match (&e.origin, e.key) {
        (_, "config") => format!("config file {}", e.reason),
        // A missing value has no source worth naming.
        (Source::Default, key) => format!("config: {key}: {}", e.reason),
        (origin, key) => format!("config: {key}: {} ({origin})", e.reason),
    }
}

impl ConfigError {
    /// An error about `key` that no single layer's value caused.
    pub fn new(key: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key,
            reason: reason.into(),
            origin: Source::Default,
        }
    }

    /// Makes the source exact: the file's path and the key's line, or the flag
    /// when it is on the command line (`argv`) and otherwise the environment
    /// variable when it is set. `command` is the daemon's clap definition.
    pub fn locate(
        mut self,
        path: Option<&Path>,
        text: &str,
        command: &clap::Command,
        argv: impl IntoIterator<Item = OsString>,
    ) -> ConfigError {
        match self.origin {
            Source::File { .. } => {
                self.origin = Source::File {
                    path: path.map(Path::to_path_buf),
                    line: line_of(text, self.key),
                };
            }
            Source::Flags => {
                let arg = command
                    .get_arguments()
                    .find(|a| a.get_id().as_str() == self.key);
                let long = arg
                    .and_then(|a| a.get_long())
                    .map_or_else(|| self.key.replace('_', "-"), str::to_string);
                let flag = format!("--{long}");
                let on_command_line = argv.into_iter().any(|a| {
                    a.to_str()
                        .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
                });
                let env = arg
                    .and_then(|a| a.get_env())
                    .filter(|var| std::env::var_os(var).is_some())
                    .map(|var| var.to_string_lossy().into_owned());
                self.origin = match env {
                    Some(var) if !on_command_line => Source::Env(var),
                    _ => Source::Flag(flag),
                };
            }
            _ => {}
        }
        self
    }
}

/// The line (from 1) where `key` is set at the top level of a TOML text.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.starts_with('[') {
            return None;
        }
        let rest = line
            .strip_prefix(key)
            .or_else(|| line.strip_prefix(&format!("\"{key}\"")));
        if rest.is_some_and(|r| r.trim_start().starts_with('=')) {
            return Some(i + 1);
        }
    }
    None
}

/// Reads a daemon's TOML file into its settings struct; unknown keys are
/// refused by the struct (`deny_unknown_fields`). Also returns the text, for
/// line numbers in errors.
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<(T, String), ConfigError> {
    let fail = |reason: String| ConfigError {
        key: "config",
        reason: format!("{}: {reason}", path.display()),
        origin: Source::File {
            path: Some(path.to_path_buf()),
            line: None,
        },
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let layer = toml::from_str(&text).map_err(|e| fail(describe_toml_error(&e, &text)))?;
    Ok((layer, text))
}

/// A TOML error without the file's values: the line, column and key, never what follows the
/// `=` (a password or a token on that line would otherwise reach the terminal and the logs).
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    // serde quotes a mistyped string value ("invalid type: string \"…\""): not that either.
    let mut message = String::new();
    for (i, part) in e.message().trim_end().split('"').enumerate() {
        match i {
            0 => message.push_str(part),
            _ if i % 2 == 1 => message.push_str("\"…"),
            _ => {
                message.push('"');
                message.push_str(part);
            }
        }
    }
    let Some(span) = e.span() else {
        return message;
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default();
    let shown = match line.split_once('=') {
        Some((key, _)) => format!("{} = …", key.trim()),
        None => line.trim().chars().take(80).collect(),
    };
    format!("line {line_no}, column {column} ({shown}): {message}")
}

/// Reads the file at `path` (if any) into a second value of the settings
/// struct, merges the flags over it with `merge`, and makes the source of an
/// error exact ([`ConfigError::locate`]).
pub fn load<A, C>(
    flags: A,
    path: Option<&Path>,
    command: &clap::Command,
    merge: impl FnOnce(A, A) -> Result<C, ConfigError>,
) -> Result<C, ConfigError>
where
    A: DeserializeOwned + Default,
{
    let (file, text) = match path {
        Some(path) => read_file(path)?,
        None => (A::default(), String::new()),
    };
    merge(flags, file).map_err(|e| e.locate(path, &text, command, std::env::args_os()))
}

/// What counts as "given" in one layer: `Some` for an option, `true` for a
/// switch, a non-empty list (a switch or a list left empty falls through to
/// the next layer).
pub trait Layered {
    type Value;
    fn given(self) -> Option<Self::Value>;
}

impl<T> Layered for Option<T> {
    type Value = T;
    fn given(self) -> Option<T> {
        self
    }
}

impl Layered for bool {
    type Value = bool;
    fn given(self) -> Option<bool> {
        self.then_some(true)
    }
}

impl<T> Layered for Vec<T> {
    type Value = Vec<T>;
    fn given(self) -> Option<Vec<T>> {
        (!self.is_empty()).then_some(self)
    }
}

/// One setting taken from the flags (with the environment) over the file:
/// `layer!(flags, file, retention)` names the field once and uses its name as
/// the key.
#[macro_export]
macro_rules! layer {
    ($flags:expr, $file:expr, $key:ident) => {
        $crate::Setting::new(
            stringify!($key),
            $crate::Layered::given($flags.$key),
            $crate::Layered::given($file.$key),
        )
    };
}

/// One setting's value and where it came from.
#[derive(Clone, Debug)]
pub struct Setting<T> {
    key: &'static str,
    value: Option<T>,
    origin: Source,
}

impl<T> Setting<T> {
    /// The flags' value if given, else the file's.
    pub fn new(key: &'static str, flags: Option<T>, file: Option<T>) -> Setting<T> {
        let (value, origin) = match (flags, file) {
            (Some(v), _) => (Some(v), Source::Flags),
            (None, Some(v)) => (
                Some(v),
                Source::File {
                    path: None,
                    line: None,
                },
            ),
            (None, None) => (None, Source::Default),
        };
        Setting { key, value, origin }
    }

    /// An error about this setting's value, naming its key and source.
    pub fn error(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key: self.key,
            reason: reason.into(),
            origin: self.origin.clone(),
        }
    }

    /// Whether any layer gave a value.
    pub fn is_set(&self) -> bool {
        self.value.is_some()
    }

    /// The value, if any layer gave one.
    pub fn get(self) -> Option<T> {
        self.value
    }

    /// The value, or `default`.
    pub fn or(self, default: T) -> T {
        self.value.unwrap_or(default)
    }

    /// The value, or the default `make` makes.
    pub fn or_else(self, make: impl FnOnce() -> T) -> T {
        self.value.unwrap_or_else(make)
    }

    /// The value, or an error with `reason` when no layer gave one.
    pub fn required(self, reason: &str) -> Result<T, ConfigError> {
        // Nothing was given, so there is no source to name.
        self.value.ok_or_else(|| ConfigError::new(self.key, reason))
    }

    /// The value (or `default`), accepted by `check` or refused with its reason.
    pub fn check(
        self,
        default: T,
        check: impl FnOnce(&T) -> Result<(), String>,
    ) -> Result<T, ConfigError> {
        let origin = self.origin.clone();
        let key = self.key;
        let v = self.or(default);
        check(&v).map_err(|reason| ConfigError {
            key,
            reason,
            origin,
        })?;
        Ok(v)
    }

    /// The value converted by `parse` (an error is the reason), if one was given.
    pub fn parse<U>(
        self,
        parse: impl FnOnce(T) -> Result<U, String>,
    ) -> Result<Option<U>, ConfigError> {
        let Setting { key, value, origin } = self;
        value.map(parse).transpose().map_err(|reason| ConfigError {
            key,
            reason,
            origin,
        })
    }
}

impl<T: PartialOrd + fmt::Display + Copy> Setting<T> {
    /// The value (or `default`) within `range`: "N is out of range (A to B)".
    pub fn within(self, default: T, range: RangeInclusive<T>) -> Result<T, ConfigError> {
        self.check(default, |n| {
            if range.contains(n) {
                Ok(())
            } else {
                Err(format!(
                    "{n} is out of range ({} to {})",
                    range.start(),
                    range.end()
                ))
            }
        })
    }
}

impl Setting<String> {
    /// A duration such as "30s" or "10m" (or `default`), within `min..=max`.
    pub fn duration(
        self,
        default: &str,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let origin = self.origin.clone();
        let key = self.key;
        let s = self.value.unwrap_or_else(|| default.to_string());
        let fail = |reason: String| ConfigError {
            key,
            reason,
            origin: origin.clone(),
        };
        let d = humantime::parse_duration(&s).map_err(|e| fail(format!("{s:?}: {e}")))?;
        if d < min || d > max {
            return Err(fail(format!(
                "{s:?} is out of range; must be {}-{}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            )));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, serde::Deserialize, Debug, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Flags {
        #[arg(long, env = "PORTWATCH_SETTINGS_TEST_WAIT")]
        wait: Option<String>,
        #[arg(long)]
        loud: bool,
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
    }

    fn command() -> clap::Command {
        <Flags as clap::CommandFactory>::command()
    }

    #[test]
    fn a_file_error_names_line_and_key_but_never_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        for text in [
            "wait = \"1s\"\npassword = \"hunter2-secret\"\n",
            "wait = \"hunter2-secret\" trailing\n",
            "loud = \"hunter2-secret\"\n",
        ] {
            std::fs::write(&path, text).unwrap();
            let e = read_file::<Flags>(&path).expect_err(text).to_string();
            assert!(!e.contains("hunter2"), "a value reached the message: {e}");
            assert!(e.contains("line "), "{e}");
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
        std::fs::write(&path, "loud = true\nwait = 1\n").unwrap();
        let e = read_file::<Flags>(&path).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("(wait = …)"), "{e}");
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_the_default() {
        let flags = Flags {
            wait: Some("2s".into()),
            ..Flags::default()
        };
        let file: Flags = toml::from_str("wait = \"5s\"\nloud = true\nnames = [\"a\"]").unwrap();
        let d = layer!(flags, file, wait)
            .duration("1s", Duration::ZERO, Duration::from_secs(60))
            .unwrap();
        assert_eq!(d, Duration::from_secs(2));
        let file: Flags = toml::from_str("loud = true\nnames = [\"a\"]").unwrap();
        assert!(layer!(Flags::default(), file, loud).or(false));
        let file: Flags = toml::from_str("names = [\"a\"]").unwrap();
        let names = layer!(Flags::default(), file, names).or(Vec::new());
        assert_eq!(names, ["a"]);
        let d = layer!(Flags::default(), Flags::default(), wait)
            .duration("1s", Duration::ZERO, Duration::from_secs(60))
            .unwrap();
        assert_eq!(d, Duration::from_secs(1));
    }

    #[test]
    fn errors_name_the_key_the_reason_and_the_source() {
        let text = "# waits\n\nwait = \"1h\"\n";
        let file: Flags = toml::from_str(text).unwrap();
        let e = layer!(Flags::default(), file, wait)
            .duration("1s", Duration::ZERO, Duration::from_secs(60))
            .unwrap_err()
            .locate(Some(Path::new("/etc/p.toml")), text, &command(), []);
        assert_eq!(e.key, "wait");
        assert_eq!(
            e.to_string(),
            "config: wait: \"1h\" is out of range; must be 0s-1m (from the config file /etc/p.toml, line 3)"
        );

        let flags = Flags {
            wait: Some("soon".into()),
            ..Flags::default()
        };
        let e = layer!(flags, Flags::default(), wait)
            .duration("1s", Duration::ZERO, Duration::from_secs(60))
            .unwrap_err();
        assert_eq!(e.origin, Source::Flags);
        let argv = ["prog", "--wait=soon"].map(OsString::from);
        let e = e.locate(None, "", &command(), argv);
        assert_eq!(e.origin, Source::Flag("--wait".into()));
        assert!(e.to_string().starts_with("config: wait: \"soon\""), "{e}");
        assert!(e.to_string().ends_with("(from --wait)"), "{e}");

        let e = layer!(Flags::default(), Flags::default(), wait)
            .required("required, e.g. 5s")
            .unwrap_err();
        assert_eq!(e.to_string(), "config: wait: required, e.g. 5s");
    }

    #[test]
    fn the_file_itself_is_named_once() {
        let dir = std::env::temp_dir().join(format!("pw-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "surprise = 1\n").unwrap();
        let e = read_file::<Flags>(&path).unwrap_err();
        assert_eq!(e.key, "config");
        let text = e.to_string();
        assert!(text.starts_with("config file "), "{text}");
        assert!(text.contains("surprise"), "{text}");
        assert!(!text.contains("config: config:"), "{text}");
        let e = read_file::<Flags>(&dir.join("missing.toml")).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn counts_stay_within_their_range() {
        let s = Setting::new("max", None, Some(0_u32));
        let e = s.within(64, 1..=1_000_000).unwrap_err();
        assert_eq!(e.reason, "0 is out of range (1 to 1000000)");
        assert_eq!(
            Setting::new("max", None, None).within(64_u32, 1..=10),
            Err(ConfigError::new("max", "64 is out of range (1 to 10)"))
        );
        assert_eq!(
            Setting::<u32>::new("max", None, None).within(5, 1..=10),
            Ok(5)
        );
    }

    #[test]
    fn line_of_finds_top_level_keys_only() {
        let text = "a = 1\n  b=2\n[plans.x]\nc = 3\n";
        assert_eq!(line_of(text, "a"), Some(1));
        assert_eq!(line_of(text, "b"), Some(2));
        assert_eq!(line_of(text, "c"), None);
        assert_eq!(line_of("ab = 1", "a"), None);
    }
}
