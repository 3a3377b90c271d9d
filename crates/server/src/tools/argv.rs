//! argv templates: each element of a tool's `command` becomes exactly one argument.
//!
//! There is no shell anywhere: a placeholder's value is inserted into its argument as
//! data, whatever characters it holds, and can never split into two arguments.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// What a placeholder stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    Input(String),
    Output(String),
    Control,
    Workdir,
    Param(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Slot(Placeholder),
}

/// One parsed argument of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgTemplate {
    segments: Vec<Segment>,
}

/// The values placeholders resolve to for one attempt.
pub struct ArgValues<'a> {
    pub workdir: &'a Path,
    pub inputs: &'a BTreeMap<String, std::path::PathBuf>,
    pub outputs: &'a BTreeMap<String, std::path::PathBuf>,
    pub control: Option<&'a Path>,
    pub params: &'a serde_json::Map<String, Value>,
}

impl ArgTemplate {
    pub fn parse(text: &str) -> Result<ArgTemplate, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed placeholder `{{{name}`")),
                        }
                    }
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Slot(parse_placeholder(&name)?));
                }
                '}' => return Err("a lone `}` (write `}}` for a literal brace)".into()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() || segments.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(ArgTemplate { segments })
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Slot(placeholder) => Some(placeholder),
            Segment::Literal(_) => None,
        })
    }

    /// The parameter that fills this whole argument (`"{params.NAME}"`), if one does: a
    /// value starting with `-` would be read by the program as an option.
    /// The argument's text when it has no placeholder (the program, `command[0]`).
    pub fn literal(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [Segment::Literal(text)] => Some(text),
            _ => None,
        }
    }

    pub fn whole_param(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [Segment::Slot(Placeholder::Param(name))] => Some(name),
            _ => None,
        }
    }

    /// Renders the argument. Every placeholder was checked against the tool at load
    /// time, so a missing value here is an internal error.
    pub fn render(&self, values: &ArgValues<'_>) -> Result<String, String> {
        let mut argument = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => argument.push_str(text),
                Segment::Slot(placeholder) => argument.push_str(&resolve(placeholder, values)?),
            }
        }
        Ok(argument)
    }
}

/// The kernel's limit on one argument (`MAX_ARG_STRLEN`, 32 pages): a longer one makes the
/// program fail to start, the client's mistake found only when the job runs.
const MAX_ARGUMENT_BYTES: usize = 128 * 1024;

/// Why parameter values cannot become arguments of `command`: (parameter, reason) for a
/// value with a NUL byte (an argument cannot hold one) or too long for one, and for a
/// value that fills a whole argument and starts with `-` (request data must not become an
/// option) unless the tool lists the parameter in `accepts_options`.
pub fn param_faults(
    command: &[ArgTemplate],
    params: &serde_json::Map<String, Value>,
    accepts_options: &[String],
) -> Vec<(String, String)> {
    let mut faults: Vec<(String, String)> = Vec::new();
    for argument in command {
        for placeholder in argument.placeholders() {
            let Placeholder::Param(name) = placeholder else {
                continue;
            };
            let Ok(value) = resolve(placeholder, &no_files(params)) else {
                continue;
            };
            let reason = if value.contains('\0') {
                "contains a NUL byte, which a program argument cannot hold"
            } else if value.len() >= MAX_ARGUMENT_BYTES {
                "is longer than a program argument can be (128 KiB)"
            } else if value.starts_with('-')
                && argument.whole_param() == Some(name.as_str())
                && !accepts_options.contains(name)
            {
                "starts with `-`: the program would read it as an option"
            } else {
                continue;
            };
            if !faults.iter().any(|(known, _)| known == name) {
                faults.push((name.clone(), reason.to_owned()));
            }
        }
    }
    faults
}

/// Values for resolving parameters alone.
fn no_files(params: &serde_json::Map<String, Value>) -> ArgValues<'_> {
    static EMPTY: BTreeMap<String, std::path::PathBuf> = BTreeMap::new();
    ArgValues {
        workdir: Path::new(""),
        inputs: &EMPTY,
        outputs: &EMPTY,
        control: None,
        params,
    }
}

fn parse_placeholder(name: &str) -> Result<Placeholder, String> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let placeholder = match name.split_once('.') {
        None if name == "control" => Placeholder::Control,
        None if name == "workdir" => Placeholder::Workdir,
        Some(("inputs", n)) if valid_name(n) => Placeholder::Input(n.into()),
        Some(("outputs", n)) if valid_name(n) => Placeholder::Output(n.into()),
        Some(("params", n)) if valid_name(n) => Placeholder::Param(n.into()),
        _ => {
            return Err(format!(
                "unknown placeholder `{{{name}}}`; use {{inputs.NAME}}, {{outputs.NAME}}, \
                 {{control}}, {{workdir}} or {{params.NAME}}"
            ))
        }
    };
    Ok(placeholder)
}

fn resolve(placeholder: &Placeholder, values: &ArgValues<'_>) -> Result<String, String> {
    let path_text = |path: &Path| path.to_string_lossy().into_owned();
    match placeholder {
        Placeholder::Workdir => Ok(path_text(values.workdir)),
        Placeholder::Control => values
            .control
            .map(path_text)
            .ok_or_else(|| "no control file".into()),
        Placeholder::Input(name) => values
            .inputs
            .get(name)
            .map(|path| path_text(path))
            .ok_or_else(|| format!("input `{name}` was not staged")),
        Placeholder::Output(name) => values
            .outputs
            .get(name)
            .map(|path| path_text(path))
            .ok_or_else(|| format!("no output `{name}`")),
        Placeholder::Param(name) => match values.params.get(name) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(Value::Null) | None => Err(format!("parameter `{name}` has no value")),
            Some(other) => Ok(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn check(template: &str, params: Value) -> Result<String, String> {
        let inputs = BTreeMap::from([("data".to_string(), PathBuf::from("/w/in data.csv"))]);
        let outputs = BTreeMap::from([("result".to_string(), PathBuf::from("/w/out.csv"))]);
        let params = params.as_object().cloned().unwrap_or_default();
        let values = ArgValues {
            workdir: Path::new("/w"),
            inputs: &inputs,
            outputs: &outputs,
            control: Some(Path::new("/w/control.txt")),
            params: &params,
        };
        ArgTemplate::parse(template)?.render(&values)
    }

    #[test]
    fn placeholders_render_into_one_argument() {
        let cases = [
            ("{inputs.data}", json!({}), "/w/in data.csv"),
            ("--out={outputs.result}", json!({}), "--out=/w/out.csv"),
            ("{control}", json!({}), "/w/control.txt"),
            ("{workdir}/x", json!({}), "/w/x"),
            (
                "-k{params.key}",
                json!({"key": "2; rm -rf /"}),
                "-k2; rm -rf /",
            ),
            ("{params.n}", json!({"n": 5}), "5"),
            ("{params.flag}", json!({"flag": true}), "true"),
            ("{{literal}}", json!({}), "{literal}"),
            ("", json!({}), ""),
            ("plain", json!({}), "plain"),
        ];
        for (template, params, expected) in cases {
            assert_eq!(
                check(template, params).unwrap(),
                expected,
                "template {template}"
            );
        }
    }

    #[test]
    fn values_that_would_become_options_or_hold_nul_are_refused() {
        let command: Vec<ArgTemplate> =
            ["sort", "{params.order}", "--key={params.key}", "{params.n}"]
                .iter()
                .map(|text| ArgTemplate::parse(text).unwrap())
                .collect();
        let check = |params: Value, accepts: &[&str]| {
            let accepts: Vec<String> = accepts.iter().map(|s| s.to_string()).collect();
            let mut names: Vec<String> =
                param_faults(&command, params.as_object().unwrap(), &accepts)
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect();
            names.sort();
            names
        };
        assert_eq!(
            check(json!({"order": "--output=/tmp/x", "key": "1", "n": 2}), &[]),
            ["order"]
        );
        assert_eq!(
            check(json!({"order": "-r", "key": "1", "n": -2}), &[]),
            ["n", "order"]
        );
        assert!(check(json!({"order": "-r", "key": "1", "n": 2}), &["order"]).is_empty());
        // Inside an argument, a leading dash is data; a NUL never is.
        assert!(check(json!({"order": "asc", "key": "-1", "n": 2}), &[]).is_empty());
        assert_eq!(
            check(
                json!({"order": "a\u{0}b", "key": "x\u{0}", "n": 2}),
                &["order"]
            ),
            ["key", "order"]
        );
        assert!(check(json!({"order": "x b", "key": "", "n": 0}), &[]).is_empty());
        let long = "x".repeat(MAX_ARGUMENT_BYTES);
        assert_eq!(
            check(json!({"order": "a", "key": long, "n": 0}), &[]),
            ["key"]
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        for template in [
            "{inputs}",
            "{nope.x}",
            "{inputs.}",
            "{control",
            "a}b",
            "{params.a b}",
        ] {
            assert!(ArgTemplate::parse(template).is_err(), "template {template}");
        }
        assert!(check("{params.missing}", json!({})).is_err());
    }
}
