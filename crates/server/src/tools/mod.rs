//! Tools: declarations checked once at start, then served read-only.
//!
//! A `Tool` is a validated declaration: its argv is parsed, its parameter schema compiled,
//! its control template compiled and its example request checked, so that nothing a tool
//! author can get wrong is discovered by the first user.

pub mod argv;
mod build;
pub mod control;
pub mod decl;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use batchgate_protocol as protocol;
use regex::Regex;
use serde_json::{Map, Value};

use crate::transforms::records::Layout;
use crate::transforms::{FieldFault, Format};
use argv::ArgTemplate;
use build::Invalid;

/// The `PATH` a local tool's program runs with (and where a bare program name is looked
/// up when a worker starts).
pub const PROGRAM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
use control::ControlTemplate;
use decl::{OutputSource, ProgressStream, ToolDecl};

/// A mistake in a tool declaration, naming the tool and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tool `{tool}`: field `{field}`: {message}")]
pub struct ToolError {
    pub tool: String,
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub layout: Layout,
    pub media_types: Vec<String>,
    pub required: bool,
    pub max_bytes: u64,
    /// The file name in the work directory, chosen by the server.
    pub file_name: String,
}

#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub name: String,
    pub source: OutputSource,
    /// Relative path in the work directory (for file outputs).
    pub path: Option<String>,
    pub format: Format,
    pub columns: Vec<String>,
    pub header: bool,
    pub media_type: String,
    pub result: bool,
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub timeout: Duration,
    pub cpu_seconds: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub open_files: u64,
    pub processes: u64,
    pub max_request_bytes: u64,
    pub max_output_bytes: u64,
    pub max_log_bytes: u64,
    pub concurrency: Option<u32>,
    pub kill_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub on_exit_codes: Vec<i32>,
    /// Signals (numbers) that end the program and mean "try again".
    pub on_signals: Vec<i32>,
    pub on_timeout: bool,
    pub backoff: Duration,
}

#[derive(Debug, Clone)]
pub struct ProgressSpec {
    pub pattern: Regex,
    pub stream: ProgressStream,
}

/// Defaults that come from the server settings rather than the tool.
#[derive(Debug, Clone)]
pub struct ToolDefaults {
    pub max_request_bytes: u64,
    pub timeout: Duration,
    pub retention: Duration,
}

impl Default for ToolDefaults {
    fn default() -> Self {
        ToolDefaults {
            max_request_bytes: 10 * 1024 * 1024,
            timeout: Duration::from_secs(300),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug)]
pub struct Tool {
    pub name: String,
    pub version: u32,
    pub title: String,
    pub description: String,
    pub command: Vec<ArgTemplate>,
    pub inputs: Vec<InputSpec>,
    pub parameters_schema: Value,
    validator: jsonschema::Validator,
    pub control: Option<ControlTemplate>,
    pub outputs: Vec<OutputSpec>,
    pub env_vars: BTreeMap<String, String>,
    pub env_allow: Vec<String>,
    pub limits: Limits,
    pub success_exit_codes: Vec<i32>,
    pub retry: RetryPolicy,
    pub progress: Option<ProgressSpec>,
    pub retention: Duration,
    pub example: protocol::SubmitRequest,
    pub expected_run: Duration,
    pub executor: decl::ExecutorDecl,
    /// What a Slurm batch job of this tool requests (`executor = "slurm"`).
    pub slurm: decl::SlurmDecl,
    /// The image of a tool with `executor = "container"`.
    pub container: Option<decl::ContainerDecl>,
    /// The pod image of a tool with `executor = "kubernetes"`.
    pub kubernetes: Option<decl::KubernetesDecl>,
    /// Parameters that may start with `-` where they fill a whole argument.
    pub accepts_options: Vec<String>,
    /// What `check-config` and the server's start say about a declaration that loads but
    /// may not do what its author meant.
    pub warnings: Vec<String>,
}

/// Warns about a whole-argument string parameter whose schema does not constrain it
/// (no `pattern`, `enum` or `const`): its values are refused only when they start with
/// `-`, and nothing else keeps them from being what the program does not expect.
fn option_warnings(command: &[ArgTemplate], schema: &Value, accepts: &[String]) -> Vec<String> {
    let mut warnings = Vec::new();
    for name in command.iter().filter_map(ArgTemplate::whole_param) {
        let property = schema.get("properties").and_then(|p| p.get(name));
        let is_string = property
            .and_then(|p| p.get("type"))
            .is_none_or(|kind| kind == "string");
        let constrained = property.is_some_and(|p| {
            ["pattern", "enum", "const"]
                .iter()
                .any(|key| p.get(key).is_some())
        });
        if is_string && !constrained && !accepts.iter().any(|a| a == name) {
            warnings.push(format!(
                "command: `{{params.{name}}}` fills a whole argument and its schema has no \
                 `pattern` or `enum`; values starting with `-` are refused, but consider a \
                 pattern that allows only what the program expects"
            ));
        }
    }
    warnings
}

/// A signal's number from its name (`SIGSEGV`, `SEGV`) or number.
fn parse_signal(signal: &decl::SignalDecl) -> Result<i32, String> {
    match signal {
        decl::SignalDecl::Number(number) if (1..=64).contains(number) => Ok(*number),
        decl::SignalDecl::Number(number) => Err(format!("{number} is not a signal (1–64)")),
        decl::SignalDecl::Name(name) => {
            let bare = name.trim_start_matches("SIG");
            (1..=31)
                .find(|&number| signal_name(number).trim_start_matches("SIG") == bare)
                .ok_or_else(|| {
                    format!("unknown signal `{name}` (e.g. \"SIGSEGV\", \"SIGBUS\", or a number)")
                })
        }
    }
}

/// The name of a standard Linux signal.
pub fn signal_name(number: i32) -> &'static str {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(number - 1)
        .ok()
        .and_then(|index| NAMES.get(index))
        .copied()
        .unwrap_or("a real-time signal")
}

impl Tool {
    /// `name@version`, the key of a tool version everywhere.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    pub fn input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|input| input.name == name)
    }

    /// Checks `parameters` against the schema after filling in defaults; returns the
    /// validated parameters or every failing path.
    pub fn validate_parameters(
        &self,
        parameters: Map<String, Value>,
    ) -> Result<Map<String, Value>, Vec<FieldFault>> {
        let mut instance = Value::Object(parameters);
        apply_defaults(&self.parameters_schema, &mut instance);
        let faults: Vec<FieldFault> = self
            .validator
            .iter_errors(&instance)
            .map(|error| {
                FieldFault::new(
                    format!("/parameters{}", error.instance_path),
                    error.to_string(),
                )
            })
            .collect();
        if !faults.is_empty() {
            return Err(faults);
        }
        let Value::Object(parameters) = instance else {
            unreachable!("the instance stays an object")
        };
        let faults: Vec<FieldFault> =
            argv::param_faults(&self.command, &parameters, &self.accepts_options)
                .into_iter()
                .map(|(name, reason)| FieldFault::new(format!("/parameters/{name}"), reason))
                .collect();
        if !faults.is_empty() {
            return Err(faults);
        }
        Ok(parameters)
    }

    /// Parameters given as query-string text, typed after the schema's property types
    /// (`window=5` → 5, `flag=true` → true, `stats=a,b` or repeated keys → an array).
    pub fn parameters_from_query(&self, pairs: &[(String, String)]) -> Map<String, Value> {
        let properties = self
            .parameters_schema
            .get("properties")
            .and_then(Value::as_object);
        let mut parameters = Map::new();
        for (key, text) in pairs {
            let declared = properties
                .and_then(|props| props.get(key))
                .and_then(|prop| prop.get("type"))
                .and_then(Value::as_str);
            let value = match declared {
                Some("array") => {
                    let items = text.split(',').map(|item| Value::String(item.to_owned()));
                    match parameters.remove(key) {
                        Some(Value::Array(mut existing)) => {
                            existing.extend(items);
                            Value::Array(existing)
                        }
                        _ => Value::Array(items.collect()),
                    }
                }
                Some("integer") => text
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::String(text.clone())),
                Some("number") => text
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or_else(|| Value::String(text.clone())),
                Some("boolean") => match text.as_str() {
                    "true" | "1" | "yes" => Value::Bool(true),
                    "false" | "0" | "no" => Value::Bool(false),
                    _ => Value::String(text.clone()),
                },
                _ => Value::String(text.clone()),
            };
            parameters.insert(key.clone(), value);
        }
        parameters
    }

    pub fn describe(&self, versions: Vec<u32>) -> protocol::ToolDescription {
        protocol::ToolDescription {
            name: self.name.clone(),
            version: self.version,
            versions,
            title: self.title.clone(),
            description: self.description.clone(),
            inputs: self
                .inputs
                .iter()
                .map(|input| protocol::InputInfo {
                    name: input.name.clone(),
                    format: input.layout.format.as_str().into(),
                    columns: input.layout.columns.clone(),
                    required: input.required,
                    media_types: input.media_types.clone(),
                    max_bytes: (input.max_bytes != u64::MAX).then_some(input.max_bytes),
                })
                .collect(),
            parameters: self.parameters_schema.clone(),
            outputs: self
                .outputs
                .iter()
                .map(|output| protocol::OutputDeclInfo {
                    name: output.name.clone(),
                    format: output.format.as_str().into(),
                    media_type: output.media_type.clone(),
                    result: output.result,
                })
                .collect(),
            limits: protocol::ToolLimits {
                timeout_seconds: self.limits.timeout.as_secs(),
                cpu_seconds: self.limits.cpu_seconds,
                memory_mb: self.limits.memory_bytes.map(|bytes| bytes / (1024 * 1024)),
                max_request_bytes: self.limits.max_request_bytes,
                max_output_bytes: self.limits.max_output_bytes,
                max_attempts: self.retry.max_attempts,
                concurrency: self.limits.concurrency,
            },
            example: self.example.clone(),
            submit: format!("/v1/tools/{}@{}/jobs", self.name, self.version),
        }
    }

    /// Builds a tool from its declaration, checking everything that can be checked
    /// without running it.
    pub fn from_decl(decl: ToolDecl, defaults: &ToolDefaults) -> Result<Tool, ToolError> {
        let tool_id = format!("{}@{}", decl.name, decl.version);
        let fail = |Invalid(field, message): Invalid| ToolError {
            tool: tool_id.clone(),
            field,
            message,
        };
        build::identity(&decl).map_err(fail)?;
        let inputs = build::inputs(decl.inputs).map_err(fail)?;
        let outputs = build::outputs(decl.outputs, decl.executor).map_err(fail)?;
        build::executor_sections(
            &decl.executor,
            &decl.slurm,
            &decl.container,
            &decl.kubernetes,
        )
        .map_err(fail)?;
        let (parameters_schema, validator) = build::parameters(decl.parameters).map_err(fail)?;
        let control = build::control(decl.control, &inputs, &parameters_schema).map_err(fail)?;
        let command = build::command(
            &decl.command,
            &inputs,
            &outputs,
            control.is_some(),
            &parameters_schema,
        )
        .map_err(fail)?;
        build::environment(&decl.env).map_err(fail)?;
        let progress = build::progress(decl.progress).map_err(fail)?;
        let limits = build::limits(decl.limits, defaults).map_err(fail)?;
        let mut warnings = Vec::new();
        let retry = build::retry(decl.retry, &mut warnings).map_err(fail)?;
        let example: protocol::SubmitRequest =
            serde_json::from_value(decl.example).map_err(|error| {
                fail(Invalid::new(
                    "example",
                    format!("not a request body: {error}"),
                ))
            })?;
        build::accepted_options(&decl.accepts_options, &command).map_err(fail)?;
        warnings.extend(option_warnings(
            &command,
            &parameters_schema,
            &decl.accepts_options,
        ));
        let tool = Tool {
            accepts_options: decl.accepts_options,
            warnings,
            title: decl.title.unwrap_or_else(|| decl.name.clone()),
            name: decl.name,
            version: decl.version,
            description: decl.description,
            command,
            inputs,
            parameters_schema,
            validator,
            control,
            outputs,
            env_vars: decl.env.vars,
            env_allow: decl.env.allow,
            limits,
            success_exit_codes: decl.success_exit_codes,
            retry,
            progress,
            retention: decl
                .retention_seconds
                .map(Duration::from_secs)
                .unwrap_or(defaults.retention),
            example,
            expected_run: Duration::from_secs_f64(
                decl.expected_run_seconds.unwrap_or(1.0).max(0.0),
            ),
            executor: decl.executor,
            slurm: decl.slurm.unwrap_or_default(),
            container: decl.container,
            kubernetes: decl.kubernetes,
        };
        tool.check_example()
            .map_err(|message| fail(Invalid::new("example", message)))?;
        Ok(tool)
    }

    /// The example must be a request this tool accepts: known and required inputs,
    /// records that convert, parameters that validate, a control file that renders.
    fn check_example(&self) -> Result<(), String> {
        let body = serde_json::to_vec(&self.example).expect("the example serializes");
        let mut sinks = ExampleSinks { tool: self };
        let (parameters, given) =
            crate::transforms::request::parse_json_request(&body[..], &mut sinks)
                .map_err(|error| error.to_string())?;
        if let Some(missing) = self
            .inputs
            .iter()
            .find(|i| i.required && !given.contains(&i.name))
        {
            return Err(format!("lacks the required input `{}`", missing.name));
        }
        let parameters = self.validate_parameters(parameters).map_err(|faults| {
            faults
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        if let Some(control) = &self.control {
            control
                .render(&parameters)
                .map_err(|fault| fault.to_string())?;
        }
        Ok(())
    }
}

struct ExampleSinks<'a> {
    tool: &'a Tool,
}

impl crate::transforms::request::InputSinks for ExampleSinks<'_> {
    type Sink = std::io::Sink;
    fn layout(&self, name: &str) -> Option<Layout> {
        self.tool.input(name).map(|input| input.layout.clone())
    }
    fn open(&mut self, _name: &str) -> std::io::Result<std::io::Sink> {
        Ok(std::io::sink())
    }
    fn close(&mut self, _name: &str, _sink: std::io::Sink) -> std::io::Result<()> {
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn names<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = items.map(String::as_str).collect();
    if list.is_empty() {
        "(none)".into()
    } else {
        list.join(", ")
    }
}

fn check_relative_path(path: &str) -> Result<(), String> {
    let relative = std::path::Path::new(path);
    let escapes = relative.components().any(|component| {
        !matches!(
            component,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if path.is_empty() || escapes || relative.is_absolute() {
        return Err(format!(
            "`{path}` must be a relative path inside the work directory"
        ));
    }
    Ok(())
}

fn check_plain_file_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.contains('/')
        || name == "."
        || name == ".."
        || name.starts_with(".batchgate")
    {
        return Err(format!("`{name}` must be a plain file name"));
    }
    Ok(())
}

/// Fills in `default` values of object properties, recursively, where absent.
pub fn apply_defaults(schema: &Value, instance: &mut Value) {
    let (Some(properties), Value::Object(map)) = (
        schema.get("properties").and_then(Value::as_object),
        instance,
    ) else {
        return;
    };
    for (name, property) in properties {
        if !map.contains_key(name) {
            if let Some(default) = property.get("default") {
                map.insert(name.clone(), default.clone());
            }
        }
        if let Some(value) = map.get_mut(name) {
            apply_defaults(property, value);
        }
    }
}

/// Every tool version the server offers.
#[derive(Debug, Default)]
pub struct ToolRegistry {
    by_name: BTreeMap<String, BTreeMap<u32, Arc<Tool>>>,
}

impl ToolRegistry {
    pub fn new(tools: Vec<Tool>) -> Result<ToolRegistry, ToolError> {
        let mut registry = ToolRegistry::default();
        for tool in tools {
            let versions = registry.by_name.entry(tool.name.clone()).or_default();
            if versions.contains_key(&tool.version) {
                return Err(ToolError {
                    tool: tool.id(),
                    field: "version".into(),
                    message: "this name and version are declared twice".into(),
                });
            }
            versions.insert(tool.version, Arc::new(tool));
        }
        Ok(registry)
    }

    /// `name` (the newest version) or `name@version`.
    pub fn resolve(&self, reference: &str) -> Option<Arc<Tool>> {
        let (name, version) = match reference.split_once('@') {
            Some((name, version)) => (name, Some(version.parse::<u32>().ok()?)),
            None => (reference, None),
        };
        let versions = self.by_name.get(name)?;
        match version {
            Some(version) => versions.get(&version).cloned(),
            None => versions.values().next_back().cloned(),
        }
    }

    /// An exact version, as stored on a job.
    pub fn get(&self, name: &str, version: u32) -> Option<Arc<Tool>> {
        self.by_name.get(name)?.get(&version).cloned()
    }

    pub fn versions(&self, name: &str) -> Vec<u32> {
        self.by_name
            .get(name)
            .map(|versions| versions.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The newest version of each tool, by name.
    pub fn latest(&self) -> impl Iterator<Item = &Arc<Tool>> {
        self.by_name
            .values()
            .filter_map(|versions| versions.values().next_back())
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Tool>> {
        self.by_name.values().flat_map(|versions| versions.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const GOOD: &str = r#"
        name = "t"
        command = ["/bin/cat", "{inputs.data}"]
        [[inputs]]
        name = "data"
        format = "csv"
        columns = ["a", "b"]
        [parameters]
        type = "object"
        properties.n = { type = "integer", minimum = 1, default = 2 }
        properties.mode = { enum = ["x", "y"] }
        properties.list = { type = "array", items = { type = "string" } }
        [[outputs]]
        name = "out"
        from = "stdout"
        format = "lines"
        [example]
        inputs.data = [{ a = 1, b = 2 }]
    "#;

    /// Builds a tool from one TOML declaration, or returns the error text.
    fn check(toml_text: &str) -> Result<Tool, String> {
        let decl: ToolDecl = toml::from_str(toml_text).map_err(|error| error.to_string())?;
        Tool::from_decl(decl, &ToolDefaults::default()).map_err(|error| error.to_string())
    }

    /// A control template may read declared parameters, loop variables and optional
    /// parameters it tests for.
    #[test]
    fn a_control_template_reading_declared_parameters_loads() {
        let template = "N {{ params.n }}\n{% if params.mode is defined %}M {{ params.mode }}{% endif %}\n{% if params.list is defined %}{% for x in params.list %}L {{ x }}\n{% endfor %}{% endif %}";
        let text = GOOD.replace(
            "[[outputs]]",
            &format!(
                "[control]\ntemplate = {}\n[[outputs]]",
                toml::Value::from(template)
            ),
        );
        check(&text).unwrap();
    }

    #[test]
    fn a_good_declaration_loads() {
        let tool = check(GOOD).unwrap();
        assert_eq!(tool.id(), "t@1");
        assert_eq!(tool.inputs[0].file_name, "data.csv");
        assert_eq!(tool.limits.max_request_bytes, 10 * 1024 * 1024);
    }

    #[test]
    fn mistakes_name_the_field() {
        let cases = [
            (
                GOOD.replace("{inputs.data}", "{inputs.dta}"),
                "field `command[1]`: no input `dta`",
            ),
            (
                GOOD.replace("\"/bin/cat\"", "\"{params.n}\""),
                "field `command[0]`",
            ),
            (
                GOOD.replace("{inputs.data}", "{params.zz}"),
                "no parameter `zz`",
            ),
            (GOOD.replace("{inputs.data}", "{control}"), "no [control]"),
            (
                GOOD.replace(
                    "[[outputs]]",
                    "[control]\ntemplate = \"N {{ params.nn }}\"\n[[outputs]]",
                ),
                "field `control.template`: `params.nn` is not a parameter",
            ),
            (
                GOOD.replace(
                    "[[outputs]]",
                    "[control]\ntemplate = \"{% for x in params.list %}{{ x }} {{ mode }}{% endfor %}\"\n[[outputs]]",
                ),
                "field `control.template`: `mode` is not a parameter",
            ),
            (
                GOOD.replace("{inputs.data}", "{outputs.out}"),
                "comes from stdout",
            ),
            (
                GOOD.replace("minimum = 1, default = 2", "minimum = 1, default = 0"),
                "field `example`",
            ),
            (
                GOOD.replace(
                    "inputs.data = [{ a = 1, b = 2 }]",
                    "inputs.data = [{ a = 1 }]",
                ),
                "field `example`",
            ),
            (
                GOOD.replace("type = \"integer\"", "type = \"intger\""),
                "field `parameters`",
            ),
            (
                GOOD.replace("format = \"lines\"", "format = \"lines\"\npath = \"x\""),
                "field `outputs[0].path`",
            ),
            (
                GOOD.replace("from = \"stdout\"", "path = \"../x\""),
                "field `outputs[0].path`",
            ),
            (
                GOOD.replace("format = \"csv\"", "format = \"lines\""),
                "field `inputs[0].columns`",
            ),
            (
                format!("{GOOD}\n[progress]\npattern = \"(\""),
                "field `progress.pattern`",
            ),
        ];
        for (text, expected) in cases {
            let error = check(&text).unwrap_err();
            assert!(
                error.contains(expected),
                "expected {expected:?} in {error:?}"
            );
            assert!(
                error.starts_with("tool `t@1`") || error.contains("unknown"),
                "{error}"
            );
        }
    }

    #[test]
    fn retry_codes_and_signals_say_what_they_mean() {
        let with_retry = |retry: &str| check(&format!("{GOOD}\n[retry]\n{retry}"));
        let tool = with_retry("on_exit_codes = [139, 3]").unwrap();
        assert_eq!(tool.warnings.len(), 1, "{:?}", tool.warnings);
        assert!(
            tool.warnings[0].contains("on_signals = [\"SIGSEGV\"]"),
            "{:?}",
            tool.warnings
        );
        assert!(with_retry("on_exit_codes = [3]")
            .unwrap()
            .warnings
            .is_empty());
        let error = with_retry("on_exit_codes = [300]").unwrap_err();
        assert!(error.contains("field `retry.on_exit_codes`"), "{error}");
        let tool = with_retry("on_signals = [\"SIGSEGV\", \"BUS\", 6]").unwrap();
        assert_eq!(tool.retry.on_signals, [11, 7, 6]);
        let error = with_retry("on_signals = [\"SIGNOPE\"]").unwrap_err();
        assert!(
            error.contains("field `retry.on_signals`: unknown signal"),
            "{error}"
        );
    }

    #[test]
    fn whole_argument_strings_without_a_pattern_are_pointed_out() {
        let command = r#"command = ["/bin/cat", "{inputs.data}"]"#;
        let loose = GOOD
            .replace(
                command,
                r#"command = ["/bin/cat", "{params.mode}", "{params.free}", "{inputs.data}"]"#,
            )
            .replace(
                "properties.list",
                "properties.free = { type = \"string\" }\n        properties.list",
            )
            .replace(
                "inputs.data = [{ a = 1, b = 2 }]",
                "inputs.data = [{ a = 1, b = 2 }]\n        parameters = { mode = \"x\", free = \"f\" }",
            );
        let tool = check(&loose).unwrap();
        assert_eq!(tool.warnings.len(), 1, "{:?}", tool.warnings);
        assert!(
            tool.warnings[0].contains("{params.free}"),
            "{:?}",
            tool.warnings
        );
        let declared = loose.replacen(
            "name = \"t\"",
            "name = \"t\"\n        accepts_options = [\"free\"]",
            1,
        );
        assert!(check(&declared).unwrap().warnings.is_empty());
        let wrong = GOOD.replacen(
            "name = \"t\"",
            "name = \"t\"\n        accepts_options = [\"n\"]",
            1,
        );
        assert!(check(&wrong)
            .unwrap_err()
            .contains("field `accepts_options`"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = check(&GOOD.replace("name = \"t\"", "name = \"t\"\ntimout = 3")).unwrap_err();
        assert!(error.contains("timout"), "{error}");
    }

    #[test]
    fn parameters_get_defaults_then_validate() {
        let tool = check(GOOD).unwrap();
        let params = tool.validate_parameters(Map::new()).unwrap();
        assert_eq!(params["n"], 2);
        let faults = tool
            .validate_parameters(
                serde_json::json!({"n": 0, "mode": "z"})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .unwrap_err();
        let paths: BTreeSet<_> = faults.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, BTreeSet::from(["/parameters/n", "/parameters/mode"]));
    }

    #[test]
    fn query_parameters_are_typed_by_the_schema() {
        let tool = check(GOOD).unwrap();
        let pairs = [("n", "5"), ("mode", "x"), ("list", "a,b"), ("list", "c")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let params = tool.parameters_from_query(&pairs);
        assert_eq!(
            Value::Object(params),
            serde_json::json!({"n": 5, "mode": "x", "list": ["a", "b", "c"]})
        );
    }

    #[test]
    fn registry_resolves_versions() {
        let one = check(GOOD).unwrap();
        let two = check(&GOOD.replace("name = \"t\"", "name = \"t\"\nversion = 2")).unwrap();
        let registry = ToolRegistry::new(vec![one, two]).unwrap();
        assert_eq!(registry.resolve("t").unwrap().version, 2);
        assert_eq!(registry.resolve("t@1").unwrap().version, 1);
        assert!(registry.resolve("t@3").is_none());
        assert!(registry.resolve("t@x").is_none());
        assert_eq!(registry.versions("t"), vec![1, 2]);
        let dup = ToolRegistry::new(vec![check(GOOD).unwrap(), check(GOOD).unwrap()]).unwrap_err();
        assert!(dup.to_string().contains("declared twice"));
    }
}
