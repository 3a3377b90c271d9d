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
