//! Loading triggers on their own, for tools that test a trigger's filter against an
//! event (`triggerfish filter test`): a trigger whose broker is not in the file is
//! still returned, and brokers are not required. Triggers are validated exactly as
//! [`super::load`] validates them; their delivery is their own or the broker default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    list_files, parse_trigger, ConfigError, ConfigErrors, Ctx, LoadOptions, TriggerConfig,
};

/// Loads every Trigger of a file or a directory of YAML files, in file and document
/// order, whether or not its broker is defined. Other kinds are skipped.
pub fn load_triggers(path: &Path, opts: &LoadOptions) -> Result<Vec<TriggerConfig>, ConfigErrors> {
    let file_error = |file: PathBuf, reason: String| ConfigError {
        file,
        document: 0,
        object: None,
        field: String::new(),
        reason,
    };
    let files = list_files(path)
        .map_err(|reason| ConfigErrors(vec![file_error(path.to_path_buf(), reason)]))?;
    let mut sources = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push((file, text)),
            Err(e) => errors.push(file_error(file, format!("cannot read: {e}"))),
        }
    }
    let refs: Vec<(&Path, &str)> = sources
        .iter()
        .map(|(p, t)| (p.as_path(), t.as_str()))
        .collect();
    match parse_triggers(&refs, opts) {
        Ok(triggers) if errors.is_empty() => Ok(triggers),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(ConfigErrors(more)) => {
            errors.extend(more);
            Err(ConfigErrors(errors))
        }
    }
}

/// Parses every Trigger in config text (already read); `sources` pairs a display path
/// with its text. See [`load_triggers`].
pub fn parse_triggers(
    sources: &[(&Path, &str)],
    opts: &LoadOptions,
) -> Result<Vec<TriggerConfig>, ConfigErrors> {
    let mut errors = Vec::new();
    let mut triggers = Vec::new();
    for (file, text) in sources {
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let mut ctx = Ctx {
                file,
                document: i + 1,
                object: None,
                errors: &mut errors,
            };
            let value = match serde_yaml_ng::Value::deserialize(doc) {
                Ok(serde_yaml_ng::Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    ctx.err("", format!("not valid YAML: {e}"));
                    break;
                }
            };
            let api = value.get("apiVersion").and_then(|v| v.as_str());
            let kind = value.get("kind").and_then(|v| v.as_str());
            if api == Some("eventing.knative.dev/v1") && kind == Some("Trigger") {
                if let Some((t, _)) = parse_trigger(value, &mut ctx, opts) {
                    triggers.push(t);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(triggers)
    } else {
        Err(ConfigErrors(errors))
    }
}
