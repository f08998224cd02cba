//! Command-line parsing with Lookout's rules for the environment, for every service and tool:
//!
//! - an environment variable set to the empty string counts as unset, so a Kubernetes Secret
//!   or compose file with `LOOKOUT_KAFKA_OPTS: ""` means "no options", not one empty option;
//! - `--help` shows that a secret option can come from the environment, never the value it has
//!   there ([`SECRET_ENV`]);
//! - a secret option's invalid value is not repeated in the error message.

use std::ffi::{OsStr, OsString};

use clap::{
    Command,
    error::{ContextKind, ContextValue, ErrorKind},
};

use crate::EXIT_USAGE;

/// Environment variables that hold credentials: Kafka client properties (SASL passwords), the
/// recorder's database URL, a camera's stream URL (`rtsp://user:password@…`) and the log
/// shipper's Elasticsearch API key. `--help` does not print their values.
pub const SECRET_ENV: &[&str] = &[
    "LOOKOUT_KAFKA_OPTS",
    "LOOKOUT_DATABASE_URL",
    "LOOKOUT_CAMERA_SOURCE",
    "LOOKOUT_LOGSHIP_ES_API_KEY",
];

/// Parses the command line (and `LOOKOUT_*` environment variables) with the rules above.
/// `--help` and `--version` print and exit 0; a bad argument prints one clear message and exits
/// 64.
pub fn parse_args<T: clap::Parser>() -> T {
    match try_parse_from(std::env::args_os(), |name| std::env::var_os(name)) {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            std::process::exit(i32::from(EXIT_USAGE));
        }
    }
}

/// [`parse_args`] without exiting, on `argv`, with `env` looking environment variables up
/// (`std::env::var_os` in a process; clap reads the values themselves from the process).
pub fn try_parse_from<T, I, A>(
    argv: I,
    env: impl Fn(&OsStr) -> Option<OsString> + Copy,
) -> Result<T, clap::Error>
where
    T: clap::Parser,
    I: IntoIterator<Item = A>,
    A: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let mut documented = hide_secret_values(T::command());
    let parsing = without_empty_env(documented.clone(), env);
    let result = parsing
        .try_get_matches_from(&argv)
        .and_then(|mut matches| T::from_arg_matches_mut(&mut matches));
    match result {
        Ok(args) => Ok(args),
        // Help is printed from the command as documented: an option whose variable is set
        // empty still says which variable it reads.
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            Err(documented.try_get_matches_from(&argv).err().unwrap_or(e))
        }
        Err(e) => Err(without_secret_value(e, &mut documented)),
    }
}

/// Marks the options read from [`SECRET_ENV`] variables so `--help` does not show their
/// values, in `cmd` and every subcommand.
fn hide_secret_values(cmd: Command) -> Command {
    cmd.mut_args(|arg| {
        let secret = arg.get_env().is_some_and(|name| SECRET_ENV.iter().any(|s| name == *s));
        if secret { arg.hide_env_values(true) } else { arg }
    })
    .mut_subcommands(hide_secret_values)
}

/// Forgets the environment variable of each option whose variable is set but empty, in `cmd`
/// and every subcommand, so the option takes its default.
fn without_empty_env(cmd: Command, env: impl Fn(&OsStr) -> Option<OsString> + Copy) -> Command {
    cmd.mut_args(|arg| {
        let empty = arg.get_env().is_some_and(|name| env(name).is_some_and(|v| v.is_empty()));
        if empty { arg.env(None) } else { arg }
    })
    .mut_subcommands(|sub| without_empty_env(sub, env))
}

/// The long flags of options read from [`SECRET_ENV`] variables, in `cmd` and below.
fn secret_flags(cmd: &Command, out: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        if arg.is_hide_env_values_set()
            && let Some(long) = arg.get_long()
        {
            out.push(format!("--{long}"));
        }
    }
    for sub in cmd.get_subcommands() {
        secret_flags(sub, out);
    }
}

/// An invalid value of a secret option, said without the value (which may be a password):
/// the reason the option's parser gave, with the value cut out.
fn without_secret_value(e: clap::Error, cmd: &mut Command) -> clap::Error {
    if !matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return e;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else { return e };
    let mut secret = Vec::new();
    secret_flags(cmd, &mut secret);
    if !secret.iter().any(|flag| arg == flag || arg.starts_with(&format!("{flag} "))) {
        return e;
    }
    let mut reason =
        std::error::Error::source(&e).map_or("not valid".to_owned(), |s| s.to_string());
    if let Some(ContextValue::String(value)) = e.get(ContextKind::InvalidValue)
        && !value.is_empty()
    {
        reason = reason.replace(value.as_str(), "<hidden>");
    }
    cmd.error(ErrorKind::ValueValidation, format!("invalid value for '{arg}': {reason}"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;
    use crate::CommonArgs;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, env = "LOOKOUT_DATABASE_URL", default_value = "sqlite://x.db")]
        database_url: String,
        #[arg(long, env = "LOOKOUT_TEST_FPS", default_value = "5")]
        fps: u32,
    }

    fn no_env(_: &OsStr) -> Option<OsString> {
        None
    }

    fn all_empty(_: &OsStr) -> Option<OsString> {
        Some(OsString::new())
    }

    #[test]
    fn secret_options_hide_their_environment_values() {
        let cmd = hide_secret_values(Cli::command());
        let hidden: Vec<&str> = cmd
            .get_arguments()
            .filter(|a| a.is_hide_env_values_set())
            .filter_map(|a| a.get_long())
            .collect();
        assert_eq!(hidden, ["kafka-opt", "database-url"]);
    }

    #[test]
    fn an_empty_variable_leaves_the_default() {
        // Which variables are set is decided by `env`; an empty one is forgotten, so the
        // option keeps its default, whatever the process environment holds.
        let cmd = without_empty_env(Cli::command(), all_empty);
        assert!(cmd.get_arguments().all(|a| a.get_env().is_none()), "every variable forgotten");
        let cmd = without_empty_env(Cli::command(), no_env);
        assert!(cmd.get_arguments().any(|a| a.get_env().is_some()), "unset ones are kept");
        let cli: Cli = try_parse_from(["x"], all_empty).unwrap();
        assert!(cli.common.kafka_opts.is_empty());
        assert_eq!(cli.fps, 5);
    }

    #[test]
    fn a_bad_secret_value_is_not_repeated() {
        let e = try_parse_from::<Cli, _, _>(
            ["x", "--kafka-opt", "sasl.password:hunter2", "--fps", "1"],
            no_env,
        )
        .unwrap_err();
        let text = e.to_string();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert!(text.contains("--kafka-opt"), "{text}");
        assert!(text.contains("expected key=value"), "the reason is kept: {text}");
        assert!(!text.contains("hunter2"), "{text}");
        let e = try_parse_from::<Cli, _, _>(["x", "--fps", "many"], no_env).unwrap_err();
        assert!(e.to_string().contains("many"), "other options' values are shown: {e}");
    }
}
