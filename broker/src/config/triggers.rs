//! Loading triggers on their own, for tools that test a trigger's filter against an
//! event (`triggerfish filter test`): a trigger whose broker is not in the file is
//! still returned, and brokers are not required. Triggers are validated exactly as
//! [`super::load`] validates them; their delivery is their own or the broker default.

use std::path::Path;

use super::{
    for_each_document, parse_trigger, read_and_parse, ConfigErrors, LoadOptions, TriggerConfig,
};

/// Loads every Trigger of a file or a directory of YAML files, in file and document
/// order, whether or not its broker is defined. Other kinds are skipped.
pub fn load_triggers(path: &Path, opts: &LoadOptions) -> Result<Vec<TriggerConfig>, ConfigErrors> {
    read_and_parse(path, |sources| parse_triggers(sources, opts))
}

/// Parses every Trigger in config text (already read); `sources` pairs a display path
/// with its text. See [`load_triggers`].
pub fn parse_triggers(
    sources: &[(&Path, &str)],
    opts: &LoadOptions,
) -> Result<Vec<TriggerConfig>, ConfigErrors> {
    let mut errors = Vec::new();
    let mut triggers = Vec::new();
    for_each_document(sources, &mut errors, |value, api, kind, ctx| {
        if api == "eventing.knative.dev/v1" && kind == "Trigger" {
            if let Some((t, _)) = parse_trigger(value, ctx, opts) {
                triggers.push(t);
            }
        }
    });
    if errors.is_empty() {
        Ok(triggers)
    } else {
        Err(ConfigErrors(errors))
    }
}
