//! `triggerfish filter eval` and `triggerfish filter test`: let users see what a CESQL
//! expression yields for an event, and why a trigger does or does not match one.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use broker::config::{load_triggers, LoadOptions};
use broker::event::{self, Event};
use broker::filter::cesql::{self, Expression};
use serde_json::json;

use crate::cli::{FilterCommand, FilterEvalArgs, FilterTestArgs};

/// Runs a `filter` subcommand.
pub fn run(command: FilterCommand) -> anyhow::Result<ExitCode> {
    match command {
        FilterCommand::Eval(args) => eval(&args),
        FilterCommand::Test(args) => test(&args),
    }
}

/// Prints exactly one JSON object, `{"value": …, "errors": […]}`; `value` is null when
/// the expression does not parse (the parse error is then the only error).
fn eval(args: &FilterEvalArgs) -> anyhow::Result<ExitCode> {
    let event = match &args.event {
        Some(path) => read_event(path)?,
        None => minimal_event(),
    };
    let output = eval_json(&args.expression, &event);
    println!("{output}");
    Ok(ExitCode::SUCCESS)
}

/// The output object, with `value` first as documented (serde_json maps sort keys).
fn eval_json(expression: &str, event: &Event) -> String {
    let (value, errors) = match Expression::parse(expression) {
        Err(e) => (
            serde_json::Value::Null,
            vec![json!({"kind": cesql::ErrorKind::Parse.as_str(), "message": e.to_string()})],
        ),
        Ok(expr) => {
            let out = expr.evaluate(event);
            let value = match out.value {
                cesql::Value::Boolean(b) => json!(b),
                cesql::Value::Integer(i) => json!(i),
                cesql::Value::String(s) => json!(s),
            };
            let errors = out
                .errors
                .iter()
                .map(|e| json!({"kind": e.kind.as_str(), "message": e.message}))
                .collect();
            (value, errors)
        }
    };
    format!(
        "{{\"value\":{value},\"errors\":{}}}",
        serde_json::Value::Array(errors)
    )
}

fn test(args: &FilterTestArgs) -> anyhow::Result<ExitCode> {
    let opts = LoadOptions {
        cluster_domain: args.common.cluster_domain.clone(),
    };
    let triggers = load_triggers(&args.trigger, &opts)?;
    anyhow::ensure!(
        !triggers.is_empty(),
        "{}: no Trigger documents (apiVersion eventing.knative.dev/v1, kind Trigger)",
        args.trigger.display()
    );
    let event = read_event(&args.event)?;
    for t in &triggers {
        let verdict = t.filter.explain(&event);
        let id = format!("{}/{}", t.broker.namespace, t.name);
        println!(
            "trigger {id}: {}",
            if verdict.is_ok() { "match" } else { "no match" }
        );
        println!("  filter: {}", t.filter.describe());
        if let Err(why) = verdict {
            println!("  failed: {why}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads and validates an event in JSON structured format; `-` reads stdin.
fn read_event(path: &Path) -> anyhow::Result<Event> {
    let (name, bytes) = if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the event from stdin")?;
        ("stdin".to_owned(), buf)
    } else {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read event file {}", path.display()))?;
        (path.display().to_string(), bytes)
    };
    let event = event::json::parse_event(&bytes)
        .with_context(|| format!("{name}: not a CloudEvent in JSON structured format"))?;
    event::validate(&event).with_context(|| format!("{name}: not a valid CloudEvent"))?;
    Ok(event)
}

fn minimal_event() -> Event {
    let mut e = Event::new();
    e.set_str(event::SPECVERSION, "1.0");
    e.set_str(event::ID, "1");
    e.set_str(event::SOURCE, "/triggerfish/filter-eval");
    e.set_str(event::TYPE, "dev.triggerfish.filter.eval");
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_event_is_valid() {
        assert_eq!(event::validate(&minimal_event()), Ok(()));
    }

    fn eval_value(expression: &str) -> serde_json::Value {
        serde_json::from_str(&eval_json(expression, &minimal_event())).expect("JSON")
    }

    #[test]
    fn eval_json_shape() {
        assert_eq!(
            eval_json("type LIKE 'dev.%'", &minimal_event()),
            r#"{"value":true,"errors":[]}"#
        );
        let out = eval_value("subject = 'x'");
        assert_eq!(out["value"], json!(false));
        assert_eq!(out["errors"][0]["kind"], json!("missingAttribute"));
        let out = eval_value("1 +");
        assert_eq!(out["value"], serde_json::Value::Null);
        assert_eq!(out["errors"][0]["kind"], json!("parse"));
    }
}
