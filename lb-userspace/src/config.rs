//! `lb agent --config PATH`: a YAML file whose keys are the agent's long flag
//! names. It is read through clap's own model of the agent's flags, so every
//! flag, present and future, can be set there without a list to maintain: the
//! file becomes arguments that clap parses with the command line.

use std::{ffi::OsString, path::PathBuf};

use clap::{
    Arg, ArgAction, ArgMatches, Command, CommandFactory as _,
    error::{ContextKind, ContextValue, ErrorKind},
    parser::ValueSource,
};
use serde_yaml::Value;

use crate::cli::Cli;

/// The agent flag that names the file, which the file itself may not set.
const CONFIG: &str = "config";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Content {
        path: PathBuf,
        #[source]
        problem: Problem,
    },
}

/// What is wrong with a file's content.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Yaml(#[from] serde_yaml::Error),
    #[error("expected a mapping of flag names to values")]
    NotAMapping,
    #[error("unknown key {key:?}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default())]
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },
    #[error("{key}: {reason}")]
    BadValue { key: String, reason: String },
}

/// `argv` with the arguments of the `--config` file of `lb agent` appended,
/// leaving out every flag the command line gives (so the command line wins,
/// and a repeatable flag given there replaces the file's list); `argv`
/// unchanged without `--config`. Errors in the command line itself are left
/// for clap to report when it parses the result.
pub fn with_config_file(argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    // Partial parsing: the command line alone may lack what the file provides.
    let Ok(matches) = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(&argv)
    else {
        return Ok(argv);
    };
    let Some(("agent", given)) = matches.subcommand() else {
        return Ok(argv);
    };
    let Some(path) = given.get_one::<PathBuf>(CONFIG).cloned() else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let extra = file_args(&agent_command(), &text, given)
        .map_err(|problem| ConfigError::Content { path, problem })?;
    Ok(argv
        .into_iter()
        .chain(extra.into_iter().map(OsString::from))
        .collect())
}

fn agent_command() -> Command {
    Cli::command()
        .find_subcommand("agent")
        .expect("lb has an agent command")
        .clone()
}

/// The arguments (`--key=value`, `--switch`) for `text`'s keys that `given`
/// (the command line's matches) does not hold, each checked by clap.
fn file_args(agent: &Command, text: &str, given: &ArgMatches) -> Result<Vec<String>, Problem> {
    let mapping = match serde_yaml::from_str(text)? {
        Value::Mapping(mapping) => mapping,
        // An empty file, or one of comments only.
        Value::Null => return Ok(Vec::new()),
        _ => return Err(Problem::NotAMapping),
    };
    let mut args = Vec::new();
    for (key, value) in &mapping {
        let key = key.as_str().ok_or(Problem::NotAMapping)?;
        let arg = find_arg(agent, key)?;
        let bad = |reason: String| Problem::BadValue {
            key: key.to_owned(),
            reason,
        };
        if arg.get_id() == CONFIG {
            return Err(bad("a config file cannot name another".into()));
        }
        let tokens = tokens(arg, key, value).map_err(bad)?;
        check(agent, &tokens).map_err(bad)?;
        if !given_on_command_line(agent, given, arg) {
            args.extend(tokens);
        }
    }
    Ok(args)
}

/// Whether the command line gives `arg`, or another of a group of
/// alternatives `arg` belongs to (the source: `--manifests`,
/// `--kubeconfig`, `--in-cluster`): the command line's choice wins there
/// too, rather than clashing with the file's.
fn given_on_command_line(agent: &Command, given: &ArgMatches, arg: &Arg) -> bool {
    let on_command_line = |id: &str| given.value_source(id) == Some(ValueSource::CommandLine);
    on_command_line(arg.get_id().as_str())
        || agent
            .get_groups()
            .filter(|group| !(*group).clone().is_multiple())
            .filter(|group| group.get_args().any(|member| member == arg.get_id()))
            .any(|group| {
                group
                    .get_args()
                    .any(|member| on_command_line(member.as_str()))
            })
}

fn find_arg<'a>(agent: &'a Command, key: &str) -> Result<&'a Arg, Problem> {
    if let Some(arg) = agent
        .get_arguments()
        .find(|arg| arg.get_long() == Some(key))
    {
        return Ok(arg);
    }
    // The same measure and threshold as clap's own suggestions.
    let suggestion = agent
        .get_arguments()
        .filter_map(Arg::get_long)
        .map(|long| (strsim::jaro(key, long), long))
        .filter(|(confidence, _)| *confidence > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, long)| long.to_owned());
    Err(Problem::UnknownKey {
        key: key.to_owned(),
        suggestion,
    })
}

/// The command-line arguments that say what `value` says for `arg`.
fn tokens(arg: &Arg, key: &str, value: &Value) -> Result<Vec<String>, String> {
    let option = |value: &Value| {
        scalar(value)
            .map(|text| format!("--{key}={text}"))
            .ok_or_else(|| "expected a single value (a string or a number)".to_owned())
    };
    match arg.get_action() {
        ArgAction::SetTrue => match value {
            Value::Bool(true) => Ok(vec![format!("--{key}")]),
            Value::Bool(false) => Ok(Vec::new()),
            _ => Err("expected true or false".into()),
        },
        ArgAction::Append => match value {
            Value::Sequence(items) => items.iter().map(option).collect(),
            one => Ok(vec![option(one)?]),
        },
        ArgAction::Set => Ok(vec![option(value)?]),
        _ => Err("cannot be set in a config file".into()),
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// Lets clap parse `tokens` alone, to blame the key for a bad value.
fn check(agent: &Command, tokens: &[String]) -> Result<(), String> {
    let argv = std::iter::once("agent").chain(tokens.iter().map(String::as_str));
    match agent.clone().try_get_matches_from(argv) {
        // Values are parsed before required flags are looked for.
        Ok(_) => Ok(()),
        Err(error) if error.kind() == ErrorKind::MissingRequiredArgument => Ok(()),
        Err(error) => Err(describe(&error)),
    }
}

/// `invalid value "x": why`, without clap's usage text.
fn describe(error: &clap::Error) -> String {
    let why = std::error::Error::source(error)
        .map(ToString::to_string)
        .or_else(|| match error.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(valid)) => {
                Some(format!("possible values: {}", valid.join(", ")))
            }
            _ => None,
        });
    match (error.get(ContextKind::InvalidValue), why) {
        (Some(ContextValue::String(value)), Some(why)) => format!("invalid value {value:?}: {why}"),
        _ => {
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_owned()
        }
    }
}

#[cfg(test)]
mod tests;
