//! A daemon's settings from three places beneath its command line (docs/DEPLOY.md §2): a
//! TOML file, `TKMS_*` environment variables, and the built-in defaults. The command line
//! wins over the environment, the environment over the file, the file over the defaults.
//!
//! The clap definition of the daemon's options stays the one source of truth: every long
//! option `--some-thing` is also the environment variable `TKMS_SOME_THING` and the file key
//! `some-thing` (or `some_thing`). Secrets are never values: they are files (`--password-file`,
//! `--admin-token-file`, ...), so `TKMS_ADMIN_TOKEN_FILE=/run/secrets/token` is the `*_FILE`
//! convention of container secrets. A repeated option (`--node`, `--manager-key`) takes an
//! array in the file and a comma-separated list in its variable.
//!
//! The file is named by `--config FILE` or `TKMS_CONFIG`. A key that names no option, a value
//! of the wrong type, or a file that cannot be read is an error at start, never ignored.

use std::{collections::BTreeMap, ffi::OsString, path::PathBuf};

use clap::{builder::OsStr, ArgAction, Command};

/// The option (and variable, `TKMS_CONFIG`) that names the file.
pub const CONFIG_OPTION: &str = "config";

/// Prefix of every daemon's environment variables.
pub const ENV_PREFIX: &str = "TKMS_";

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The file is not TOML, or a value has no option form.
    #[error("config file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The environment variable of option `--long`.
pub fn env_name(long: &str) -> String {
    format!("{ENV_PREFIX}{}", long.to_uppercase().replace('-', "_"))
}

/// The file named on `argv` (`--config FILE`, `--config=FILE`) or by `TKMS_CONFIG`.
pub fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{CONFIG_OPTION}");
    let prefixed = format!("--{CONFIG_OPTION}=");
    let mut args = argv.iter();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == flag {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix(&prefixed) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(env_name(CONFIG_OPTION)).map(PathBuf::from)
}

/// Settings read from a file: option name → values.
#[derive(Debug, Clone, Default)]
pub struct FileSettings {
    path: PathBuf,
    values: BTreeMap<String, Vec<String>>,
}

impl FileSettings {
    /// Read and parse `path`.
    pub fn read(path: PathBuf) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Read {
            path: path.clone(),
            error,
        })?;
        Self::parse(path, &text)
    }

    /// Parse `text`, the contents of `path`.
    pub fn parse(path: PathBuf, text: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.clone(),
            reason,
        };
        let table: toml::Table = text.parse().map_err(|e| invalid(format!("{e}")))?;
        let mut values = BTreeMap::new();
        for (key, value) in table {
            let name = key.replace('_', "-");
            let list = match value {
                toml::Value::Array(items) => items
                    .into_iter()
                    .map(|item| scalar(&item).ok_or_else(|| invalid(format!("{key}: {item:?} is not a string, number or boolean"))))
                    .collect::<Result<Vec<_>, _>>()?,
                other => vec![scalar(&other).ok_or_else(|| {
                    invalid(format!(
                        "{key}: a table is not a setting (keys name command-line options, e.g. data-dir = \"/var/lib/tkms\")"
                    ))
                })?],
            };
            if values.insert(name, list).is_some() {
                return Err(invalid(format!("{key} is given twice")));
            }
        }
        Ok(Self { path, values })
    }
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(_) | toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

/// What a file key that names no option of the command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKeys {
    /// An error (a typo must not pass unnoticed).
    Refuse,
    /// Skipped: the file is another command's (e.g. `tkms node init` reads the file of `tkms
    /// node run`, which has more settings).
    Skip,
}

/// Layer the environment and `file` beneath the command line of `cmd`'s own options: each
/// long option reads `TKMS_<NAME>` when it is not on the command line, and else the file's
/// value before its built-in default.
pub fn layer(
    mut cmd: Command,
    file: Option<&FileSettings>,
    unknown: UnknownKeys,
) -> Result<Command, ConfigError> {
    let options: Vec<(clap::Id, String, bool)> = cmd
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            let repeated = matches!(a.get_action(), ArgAction::Append);
            Some((a.get_id().clone(), long.to_string(), repeated))
        })
        .filter(|(_, long, _)| long != "help" && long != "version")
        .collect();
    if let Some(file) = file.filter(|_| unknown == UnknownKeys::Refuse) {
        if let Some(unknown) = file
            .values
            .keys()
            .find(|k| k.as_str() == CONFIG_OPTION || !options.iter().any(|(_, l, _)| l == *k))
        {
            return Err(ConfigError::Invalid {
                path: file.path.clone(),
                reason: format!(
                    "{unknown:?} is not a setting of `{}` (see its --help)",
                    cmd.get_name()
                ),
            });
        }
    }
    for (id, long, repeated) in options {
        let var = env_name(&long);
        let from_file = file.and_then(|f| f.values.get(&long)).cloned();
        if let (Some(file), Some(values)) = (file, &from_file) {
            // clap checks the number of values only on the command line.
            if !repeated && values.len() > 1 {
                return Err(ConfigError::Invalid {
                    path: file.path.clone(),
                    reason: format!("{long} takes one value, not a list"),
                });
            }
        }
        cmd = if repeated {
            // clap reads one value from a variable; a repeated option takes a list.
            // An empty (or blank) variable is unset: it does not hide the file's list.
            let from_env = std::env::var(&var)
                .ok()
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                })
                .filter(|values| !values.is_empty());
            match from_env.or(from_file) {
                Some(values) if !values.is_empty() => cmd.mut_arg(id, |a| {
                    a.required(false)
                        .default_values(values.into_iter().map(OsStr::from))
                }),
                _ => cmd,
            }
        } else {
            cmd.mut_arg(id, |a| {
                // A switch set from a variable or the file reads the usual spellings:
                // 1/0, yes/no, on/off, true/false (clap's default takes only true/false).
                let a = if matches!(a.get_action(), ArgAction::SetTrue) {
                    a.value_parser(clap::builder::BoolishValueParser::new())
                } else {
                    a
                };
                // A file's values are defaults to clap, which count for neither "required
                // unless --other is present" nor "requires --other": with a file, those
                // checks are the daemon's own.
                let a = if file.is_some() {
                    a.env(var)
                        .required_unless_present(clap::builder::Resettable::<clap::Id>::Reset)
                        .requires(clap::builder::Resettable::<clap::Id>::Reset)
                } else {
                    a.env(var)
                };
                match from_file {
                    Some(values) => a
                        .required(false)
                        .default_values(values.into_iter().map(OsStr::from)),
                    None => a,
                }
            })
        };
    }
    Ok(cmd)
}

/// A (sub)command whose options are layered: its path of subcommand names from the program
/// (empty: the program's own options), and what an unknown file key is.
pub type Layered<'a> = (&'a [&'a str], UnknownKeys);

/// Layer the environment and the file named on `argv` beneath the options of the subcommand
/// at `path` of `cmd`, e.g. `["node", "run"]` of `tkms`.
pub fn layer_at(
    cmd: Command,
    (path, unknown): Layered<'_>,
    argv: &[OsString],
) -> Result<Command, ConfigError> {
    let file = config_path(argv).map(FileSettings::read).transpose()?;
    layer_path(cmd, path, file.as_ref(), unknown)
}

fn layer_path(
    cmd: Command,
    path: &[&str],
    file: Option<&FileSettings>,
    unknown: UnknownKeys,
) -> Result<Command, ConfigError> {
    let Some((first, rest)) = path.split_first() else {
        return layer(cmd, file, unknown);
    };
    let mut failed = None;
    let cmd = cmd.mut_subcommand(*first, |sub| {
        match layer_path(sub.clone(), rest, file, unknown) {
            Ok(layered) => layered,
            Err(e) => {
                failed = Some(e);
                sub
            }
        }
    });
    failed.map_or(Ok(cmd), Err)
}

/// The registry settings of a daemon (`--registry-file`, `--rpc-url`, `--registry-address`),
/// checked as clap cannot when they come from different sources: the chain's two go
/// together, and a file and a chain are not both given.
pub fn check_registry(
    registry_file: bool,
    rpc_url: bool,
    registry_address: bool,
) -> Result<(), String> {
    if rpc_url != registry_address {
        return Err("--rpc-url and --registry-address go together".into());
    }
    if rpc_url && registry_file {
        return Err(
            "--registry-file and --rpc-url both name a registry (from the command \
                    line, TKMS_* variables or the config file): give one"
                .into(),
        );
    }
    Ok(())
}

/// Parse this process's command line as `P`, with the environment and the config file layered
/// beneath the options of whichever of the `layered` subcommands the command line runs. Exits
/// with a message on an error, as clap's `parse` does.
pub fn parse<P: clap::Parser>(layered: &[Layered<'_>]) -> P {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let mut cmd = P::command();
    for &(path, unknown) in layered.iter().filter(|(p, _)| runs(&argv, p)) {
        cmd = layer_at(cmd, (path, unknown), &argv).unwrap_or_else(|e| {
            eprintln!("{}: error: {e}", cmd_name(&argv));
            std::process::exit(2)
        });
    }
    let matches = cmd.get_matches_from(argv);
    P::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn cmd_name(argv: &[OsString]) -> String {
    argv.first()
        .and_then(|a| {
            PathBuf::from(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "tkms".into())
}

/// Whether `argv` runs the subcommand at `path` (its words in a row after the program name).
fn runs(argv: &[OsString], path: &[&str]) -> bool {
    path.is_empty()
        || argv
            .get(1..)
            .unwrap_or_default()
            .windows(path.len())
            .any(|w| w.iter().zip(path).all(|(a, p)| a == p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    #[derive(Debug, Args)]
    struct Opts {
        #[arg(long, required = true)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 7)]
        count: u32,
        #[arg(long = "node")]
        nodes: Vec<String>,
        #[arg(long)]
        verbose: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    }

    fn parse(file: &str, argv: &[&str]) -> Result<Opts, String> {
        let settings = FileSettings::parse("t.toml".into(), file).map_err(|e| e.to_string())?;
        let cmd = Opts::augment_args(Command::new("daemon"));
        let cmd = layer(cmd, Some(&settings), UnknownKeys::Refuse).map_err(|e| e.to_string())?;
        let argv = std::iter::once("daemon").chain(argv.iter().copied());
        let matches = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
        Opts::from_arg_matches(&matches).map_err(|e| e.to_string())
    }

    #[test]
    fn the_file_fills_what_the_command_line_leaves_out() {
        let o = parse(
            "data-dir = \"/d\"\ncount = 9\nnode = [\"a\", \"b\"]\nverbose = true",
            &[],
        )
        .unwrap();
        assert_eq!(o.data_dir, PathBuf::from("/d"));
        assert_eq!(o.count, 9);
        assert_eq!(o.nodes, ["a", "b"]);
        assert!(o.verbose);
        let o = parse(
            "data_dir = \"/d\"\ncount = 9",
            &["--count", "3", "--node", "c"],
        )
        .unwrap();
        assert_eq!(
            (o.count, o.nodes.as_slice()),
            (3, ["c".to_string()].as_slice())
        );
        assert!(!o.verbose);
    }

    #[test]
    fn switches_read_the_usual_spellings() {
        for (value, set) in [
            ("1", true),
            ("\"yes\"", true),
            ("\"on\"", true),
            ("true", true),
            ("0", false),
            ("\"no\"", false),
            ("false", false),
        ] {
            let o = parse(&format!("data-dir = \"/d\"\nverbose = {value}"), &[]).unwrap();
            assert_eq!(o.verbose, set, "verbose = {value}");
        }
        let e = parse("data-dir = \"/d\"\nverbose = \"maybe\"", &[]).unwrap_err();
        assert!(e.contains("maybe"), "{e}");
        // The command line's switch still takes no value.
        assert!(parse("data-dir = \"/d\"", &["--verbose"]).unwrap().verbose);
    }

    #[test]
    fn bad_files_are_errors_that_name_the_key() {
        let e = parse("data-dir = \"/d\"\ncuont = 9", &[]).unwrap_err();
        assert!(e.contains("\"cuont\" is not a setting"), "{e}");
        let e = parse("data-dir = \"/d\"\ncount = \"many\"", &[]).unwrap_err();
        assert!(e.contains("many"), "{e}");
        let e = parse("[node]\nx = 1", &[]).unwrap_err();
        assert!(e.contains("a table is not a setting"), "{e}");
        let e = parse("data-dir = ", &[]).unwrap_err();
        assert!(e.contains("t.toml"), "{e}");
        let e = parse("data-dir = [\"/a\", \"/b\"]", &[]).unwrap_err();
        assert!(e.contains("data-dir takes one value, not a list"), "{e}");
        let e = parse("config = \"other.toml\"\ndata-dir = \"/d\"", &[]).unwrap_err();
        assert!(e.contains("\"config\" is not a setting"), "{e}");
        // Required options stay required when the file leaves them out.
        let e = parse("count = 1", &[]).unwrap_err();
        assert!(e.contains("--data-dir"), "{e}");
    }

    #[test]
    fn the_config_file_is_found_on_the_command_line() {
        let argv: Vec<OsString> = ["tkms", "node", "run", "--config", "/etc/n.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(config_path(&argv), Some(PathBuf::from("/etc/n.toml")));
        let argv: Vec<OsString> = ["x", "--config=/a.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(config_path(&argv), Some(PathBuf::from("/a.toml")));
        assert_eq!(env_name("admin-token-file"), "TKMS_ADMIN_TOKEN_FILE");
    }
}
