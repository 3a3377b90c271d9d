//! One builder per section of a tool declaration: each checks its section and turns it
//! into what `Tool` keeps, or says which field is wrong and why (`Tool::from_decl` adds
//! the tool's name).

use std::collections::BTreeSet;
use std::time::Duration;

use regex::Regex;
use serde_json::Value;

use super::argv::{ArgTemplate, Placeholder};
use super::control::ControlTemplate;
use super::decl::{self, ExecutorDecl, OutputSource, ToolDecl};
use super::{
    check_plain_file_name, check_relative_path, names, parse_signal, signal_name, valid_name,
    InputSpec, Limits, OutputSpec, ProgressSpec, RetryPolicy, ToolDefaults,
};
use crate::transforms::records::Layout;

/// A declaration's mistake: the field (`inputs[0].name`) and what is wrong with it.
#[derive(Debug)]
pub struct Invalid(pub String, pub String);

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid(field.into(), message.into())
    }
}

const NAME_RULE: &str = "use letters, digits, `_` and `-` only";

pub fn identity(decl: &ToolDecl) -> Result<(), Invalid> {
    if !valid_name(&decl.name) {
        return Err(Invalid::new("name", NAME_RULE));
    }
    if decl.version == 0 {
        return Err(Invalid::new("version", "versions start at 1"));
    }
    Ok(())
}

pub fn inputs(declared: Vec<decl::InputDecl>) -> Result<Vec<InputSpec>, Invalid> {
    let mut inputs: Vec<InputSpec> = Vec::new();
    for (index, input) in declared.into_iter().enumerate() {
        let field = format!("inputs[{index}]");
        if !valid_name(&input.name) {
            return Err(Invalid::new(format!("{field}.name"), NAME_RULE));
        }
        if inputs.iter().any(|known| known.name == input.name) {
            return Err(Invalid::new(
                format!("{field}.name"),
                format!("input `{}` is declared twice", input.name),
            ));
        }
        if !input.columns.is_empty() && !input.format.is_tabular() {
            return Err(Invalid::new(
                format!("{field}.columns"),
                "columns apply to csv and tsv only",
            ));
        }
        let media_types = if input.media_types.is_empty() {
            vec![input.format.default_media_type().to_owned()]
        } else {
            input.media_types
        };
        inputs.push(InputSpec {
            file_name: format!("{}.{}", input.name, input.format.extension()),
            name: input.name,
            layout: Layout {
                format: input.format,
                columns: input.columns,
                header: input.header,
            },
            media_types,
            required: input.required,
            max_bytes: input.max_bytes.unwrap_or(u64::MAX),
        });
    }
    Ok(inputs)
}

pub fn outputs(
    declared: Vec<decl::OutputDecl>,
    executor: ExecutorDecl,
) -> Result<Vec<OutputSpec>, Invalid> {
    if executor == ExecutorDecl::Kubernetes
        && declared
            .iter()
            .any(|output| output.from == OutputSource::Stdout)
    {
        return Err(Invalid::new(
            "outputs",
            "a Kubernetes tool's outputs must be files: the pod log interleaves stdout and stderr",
        ));
    }
    let mut outputs: Vec<OutputSpec> = Vec::new();
    for (index, output) in declared.into_iter().enumerate() {
        let field = format!("outputs[{index}]");
        if !valid_name(&output.name) {
            return Err(Invalid::new(format!("{field}.name"), NAME_RULE));
        }
        if outputs.iter().any(|known| known.name == output.name) {
            return Err(Invalid::new(
                format!("{field}.name"),
                format!("output `{}` is declared twice", output.name),
            ));
        }
        match (output.from, &output.path) {
            (OutputSource::File, None) => {
                return Err(Invalid::new(
                    format!("{field}.path"),
                    "a file output needs a path",
                ))
            }
            (OutputSource::Stdout, Some(_)) => {
                return Err(Invalid::new(
                    format!("{field}.path"),
                    "a stdout output has no path",
                ))
            }
            (OutputSource::File, Some(path)) => check_relative_path(path)
                .map_err(|message| Invalid::new(format!("{field}.path"), message))?,
            (OutputSource::Stdout, None) => {}
        }
        outputs.push(OutputSpec {
            media_type: output
                .media_type
                .unwrap_or_else(|| output.format.default_media_type().to_owned()),
            name: output.name,
            source: output.from,
            path: output.path,
            format: output.format,
            columns: output.columns,
            header: output.header,
            result: output.result,
            required: output.required,
        });
    }
    if outputs.is_empty() {
        return Err(Invalid::new("outputs", "declare at least one output"));
    }
    Ok(outputs)
}

/// `[tools.slurm]`, `[tools.container]` and `[tools.kubernetes]` go with their executor.
pub fn executor_sections(
    executor: &ExecutorDecl,
    slurm: &Option<decl::SlurmDecl>,
    container: &Option<decl::ContainerDecl>,
    kubernetes: &Option<decl::KubernetesDecl>,
) -> Result<(), Invalid> {
    let executor = *executor;
    if slurm.is_some() && executor != ExecutorDecl::Slurm {
        return Err(Invalid::new(
            "slurm",
            "Slurm resources are given but the tool's executor is not `slurm`",
        ));
    }
    if slurm.as_ref().and_then(|slurm| slurm.cpus) == Some(0) {
        return Err(Invalid::new("slurm.cpus", "a job needs at least one CPU"));
    }
    match (container, executor) {
        (None, ExecutorDecl::Container) => {
            return Err(Invalid::new(
                "container",
                "`executor = \"container\"` needs [tools.container] with an `image`",
            ))
        }
        (Some(_), executor) if executor != ExecutorDecl::Container => {
            return Err(Invalid::new(
                "container",
                "an image is given but the tool's executor is not `container`",
            ))
        }
        (Some(container), _) if container.image.trim().is_empty() => {
            return Err(Invalid::new("container.image", "name an image"))
        }
        (Some(container), _) if container.cpus.is_some_and(|cpus| cpus <= 0.0) => {
            return Err(Invalid::new("container.cpus", "must be positive"))
        }
        _ => {}
    }
    match (kubernetes, executor) {
        (None, ExecutorDecl::Kubernetes) => Err(Invalid::new(
            "kubernetes",
            "`executor = \"kubernetes\"` needs [tools.kubernetes] with an `image`",
        )),
        (Some(_), executor) if executor != ExecutorDecl::Kubernetes => Err(Invalid::new(
            "kubernetes",
            "an image is given but the tool's executor is not `kubernetes`",
        )),
        (Some(pod), _) if pod.image.trim().is_empty() => {
            Err(Invalid::new("kubernetes.image", "name an image"))
        }
        _ => Ok(()),
    }
}

/// The parameter schema (an empty object when none is declared) and its validator.
pub fn parameters(declared: Option<Value>) -> Result<(Value, jsonschema::Validator), Invalid> {
    let schema = declared.unwrap_or_else(
        || serde_json::json!({"type": "object", "properties": {}, "additionalProperties": false}),
    );
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err(Invalid::new(
            "parameters.type",
            "the parameter schema must have `type = \"object\"`",
        ));
    }
    let validator = jsonschema::validator_for(&schema)
        .map_err(|error| Invalid::new("parameters", format!("not a valid JSON Schema: {error}")))?;
    Ok((schema, validator))
}

pub fn control(
    declared: Option<decl::ControlDecl>,
    inputs: &[InputSpec],
    parameters_schema: &Value,
) -> Result<Option<ControlTemplate>, Invalid> {
    let Some(control) = declared else {
        return Ok(None);
    };
    check_plain_file_name(&control.file)
        .map_err(|message| Invalid::new("control.file", message))?;
    if inputs.iter().any(|input| input.file_name == control.file) {
        return Err(Invalid::new(
            "control.file",
            "clashes with an input file name",
        ));
    }
    let template = ControlTemplate::compile(control.file, control.template, control.values)
        .map_err(|message| Invalid::new("control.template", message))?;
    // A name the template reads must be a parameter of the schema (a typo would otherwise
    // fail every request, and be blamed on the example).
    let properties = parameters_schema
        .get("properties")
        .and_then(Value::as_object);
    for name in template.undeclared() {
        let known = match name.split_once('.') {
            Some(("params", parameter)) => {
                let parameter = parameter.split('.').next().unwrap_or(parameter);
                properties.is_some_and(|properties| properties.contains_key(parameter))
            }
            None => name == "params",
            Some(_) => false,
        };
        if !known {
            return Err(Invalid::new(
                "control.template",
                format!(
                    "`{name}` is not a parameter; the template reads `params.NAME` for the \
                     parameters of the schema: {}",
                    names(properties.into_iter().flat_map(|p| p.keys()))
                ),
            ));
        }
    }
    Ok(Some(template))
}

/// The argv templates: every placeholder names something declared, and the program
/// itself is fixed.
pub fn command(
    declared: &[String],
    inputs: &[InputSpec],
    outputs: &[OutputSpec],
    has_control: bool,
    parameters_schema: &Value,
) -> Result<Vec<ArgTemplate>, Invalid> {
    if declared.is_empty() {
        return Err(Invalid::new("command", "the argv list is empty"));
    }
    let properties: BTreeSet<String> = parameters_schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| props.keys().cloned().collect())
        .unwrap_or_default();
    let mut command = Vec::new();
    for (index, argument) in declared.iter().enumerate() {
        let field = format!("command[{index}]");
        let template =
            ArgTemplate::parse(argument).map_err(|message| Invalid::new(&field, message))?;
        for placeholder in template.placeholders() {
            let problem = match placeholder {
                Placeholder::Input(name) if !inputs.iter().any(|i| &i.name == name) => {
                    Some(format!(
                        "no input `{name}`; inputs are: {}",
                        names(inputs.iter().map(|i| &i.name))
                    ))
                }
                Placeholder::Output(name) => match outputs.iter().find(|o| &o.name == name) {
                    None => Some(format!(
                        "no output `{name}`; outputs are: {}",
                        names(outputs.iter().map(|o| &o.name))
                    )),
                    Some(output) if output.source == OutputSource::Stdout => {
                        Some(format!("output `{name}` comes from stdout and has no file"))
                    }
                    Some(_) => None,
                },
                Placeholder::Control if !has_control => {
                    Some("`{control}` is used but no [control] is declared".into())
                }
                Placeholder::Param(name) if !properties.contains(name) => {
                    Some(format!("no parameter `{name}` in the parameter schema"))
                }
                _ => None,
            };
            if let Some(message) = problem {
                return Err(Invalid::new(&field, message));
            }
        }
        command.push(template);
    }
    if command[0].placeholders().next().is_some() {
        return Err(Invalid::new(
            "command[0]",
            "the program itself cannot come from a placeholder",
        ));
    }
    Ok(command)
}

pub fn environment(env: &decl::EnvDecl) -> Result<(), Invalid> {
    for name in env.vars.keys().chain(env.allow.iter()) {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(Invalid::new(
                "env",
                format!("`{name}` is not a variable name"),
            ));
        }
    }
    Ok(())
}

pub fn progress(declared: Option<decl::ProgressDecl>) -> Result<Option<ProgressSpec>, Invalid> {
    let Some(progress) = declared else {
        return Ok(None);
    };
    Ok(Some(ProgressSpec {
        pattern: Regex::new(&progress.pattern)
            .map_err(|error| Invalid::new("progress.pattern", error.to_string()))?,
        stream: progress.stream,
    }))
}

pub fn limits(declared: decl::LimitsDecl, defaults: &ToolDefaults) -> Result<Limits, Invalid> {
    let mb = |value: Option<u64>| value.map(|mb| mb * 1024 * 1024);
    let limits = Limits {
        timeout: declared
            .timeout_seconds
            .map(Duration::from_secs)
            .unwrap_or(defaults.timeout),
        cpu_seconds: declared.cpu_seconds,
        memory_bytes: mb(declared.memory_mb),
        file_size_bytes: mb(declared.file_size_mb),
        open_files: declared.open_files.unwrap_or(1024),
        processes: declared.processes.unwrap_or(64),
        max_request_bytes: declared
            .max_request_bytes
            .unwrap_or(defaults.max_request_bytes),
        max_output_bytes: declared.max_output_bytes.unwrap_or(100 * 1024 * 1024),
        max_log_bytes: declared.max_log_bytes.unwrap_or(1024 * 1024),
        concurrency: declared.concurrency,
        kill_grace: Duration::from_secs(declared.kill_grace_seconds.unwrap_or(5)),
    };
    if limits.timeout.is_zero() {
        return Err(Invalid::new("limits.timeout_seconds", "must be at least 1"));
    }
    if limits.concurrency == Some(0) {
        return Err(Invalid::new("limits.concurrency", "must be at least 1"));
    }
    Ok(limits)
}

/// The retry policy; an exit code a shell would report for a signal gets a warning (a
/// program killed by a signal has no exit code).
pub fn retry(
    declared: decl::RetryDecl,
    warnings: &mut Vec<String>,
) -> Result<RetryPolicy, Invalid> {
    for &code in &declared.on_exit_codes {
        if !(0..=255).contains(&code) {
            return Err(Invalid::new(
                "retry.on_exit_codes",
                format!("{code} is not an exit status (0–255)"),
            ));
        }
        if let Some(name) = (129..=192).contains(&code).then(|| signal_name(code - 128)) {
            warnings.push(format!(
                "retry.on_exit_codes: {code} is what a shell reports for a program killed by \
                 signal {} ({name}), but a program killed by a signal has no exit code; \
                 {code} matches only a program that itself exits with {code}. To retry \
                 after the signal, use retry.on_signals = [\"{name}\"]",
                code - 128
            ));
        }
    }
    let on_signals = declared
        .on_signals
        .iter()
        .map(|signal| {
            parse_signal(signal).map_err(|message| Invalid::new("retry.on_signals", message))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let retry = RetryPolicy {
        max_attempts: declared.max_attempts.unwrap_or(3),
        on_exit_codes: declared.on_exit_codes,
        on_signals,
        on_timeout: declared.on_timeout,
        backoff: Duration::from_secs_f64(declared.backoff_seconds.unwrap_or(1.0).max(0.0)),
    };
    if retry.max_attempts == 0 {
        return Err(Invalid::new("retry.max_attempts", "must be at least 1"));
    }
    Ok(retry)
}

/// Each parameter that may start with `-` fills a whole argument of the command.
pub fn accepted_options(accepts: &[String], command: &[ArgTemplate]) -> Result<(), Invalid> {
    for name in accepts {
        if !command
            .iter()
            .any(|argument| argument.whole_param() == Some(name))
        {
            return Err(Invalid::new(
                "accepts_options",
                format!("`{name}` fills no whole argument of `command`"),
            ));
        }
    }
    Ok(())
}
