//! Where the results go: the JSON report to a file or to stdout (`--json PATH|-`), and the
//! human-readable figures to stdout, or to stderr when the JSON takes stdout so that stdout
//! stays one JSON document a program can parse.

use std::ffi::OsString;
use std::fmt::Display;
use std::path::PathBuf;

use serde::Serialize;

/// The argument of `--json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonDestination {
    /// `-`.
    Stdout,
    File(PathBuf),
}

/// `-` is stdout, as for most command-line tools; anything else is a path (clap parses the
/// argument through this, so non-UTF-8 paths work).
impl From<OsString> for JsonDestination {
    fn from(arg: OsString) -> Self {
        if arg == "-" {
            Self::Stdout
        } else {
            Self::File(arg.into())
        }
    }
}

/// Prints the human-readable figures: to stdout, or to stderr when `--json -` keeps stdout for
/// the JSON.
pub(crate) fn print_figures(json: Option<&JsonDestination>, figures: impl Display) {
    if json == Some(&JsonDestination::Stdout) {
        eprintln!("{figures}");
    } else {
        println!("{figures}");
    }
}

/// Writes `value` as pretty JSON where `--json` said; nothing without `--json`.
pub(crate) fn write(json: Option<&JsonDestination>, value: &impl Serialize) -> anyhow::Result<()> {
    let Some(destination) = json else {
        return Ok(());
    };
    let text = serde_json::to_string_pretty(value)?;
    match destination {
        JsonDestination::Stdout => println!("{text}"),
        JsonDestination::File(path) => {
            std::fs::write(path, text + "\n")
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!("report written to {}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::path::PathBuf;

    use super::JsonDestination;

    #[test]
    fn a_dash_is_stdout_and_anything_else_a_path() {
        assert_eq!(
            JsonDestination::from(OsString::from("-")),
            JsonDestination::Stdout
        );
        for path in ["report.json", "./-", "-x", "/tmp/-"] {
            assert_eq!(
                JsonDestination::from(OsString::from(path)),
                JsonDestination::File(PathBuf::from(path)),
                "{path}"
            );
        }
    }
}
