//! Control files rendered from validated parameters with minijinja.
//!
//! Undefined names are errors (strict mode), and a value can never add a line or a
//! directive: in `reject` mode any value holding a control character (line breaks
//! included) fails the request with the parameter named; in `json` mode strings are
//! written as JSON string literals.

use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::{Map, Value};

use super::decl::ControlValues;
use crate::transforms::{pointer_token, FieldFault};

const TEMPLATE_NAME: &str = "control";

pub struct ControlTemplate {
    pub file: String,
    values: ControlValues,
    env: Environment<'static>,
}

impl std::fmt::Debug for ControlTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlTemplate")
            .field("file", &self.file)
            .field("values", &self.values)
            .finish()
    }
}

impl ControlTemplate {
    pub fn compile(file: String, source: String, values: ControlValues) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_formatter(move |out, _state, value| {
            if value.is_undefined() {
                return Err(minijinja::Error::new(
                    ErrorKind::UndefinedError,
                    "undefined value",
                ));
            }
            let text = match (values, value.as_str()) {
                (ControlValues::Json, Some(text)) => {
                    serde_json::to_string(text).expect("a string serializes")
                }
                _ => value.to_string(),
            };
            if values == ControlValues::Reject && text.chars().any(char::is_control) {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "a value written to the control file holds a line break or control character",
                ));
            }
            out.write_str(&text).map_err(minijinja::Error::from)
        });
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|error| format!("template does not compile: {error:#}"))?;
        Ok(ControlTemplate { file, values, env })
    }

    /// The names the template reads that it does not define itself (`params.days`,
    /// nested), sorted.
    pub fn undeclared(&self) -> Vec<String> {
        let Ok(template) = self.env.get_template(TEMPLATE_NAME) else {
            return Vec::new();
        };
        let mut names: Vec<String> = template.undeclared_variables(true).into_iter().collect();
        names.sort();
        names
    }

    /// Renders the control file. Faults name the offending parameter when they can.
    pub fn render(&self, params: &Map<String, Value>) -> Result<String, FieldFault> {
        if self.values == ControlValues::Reject {
            for (name, value) in params {
                check_no_control_chars(value, &format!("/parameters/{}", pointer_token(name)))?;
            }
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|error| FieldFault::new("/parameters", error.to_string()))?;
        template
            .render(minijinja::context! { params => params })
            .map_err(|error| FieldFault::new("/parameters", format!("control file: {error:#}")))
    }
}

fn check_no_control_chars(value: &Value, path: &str) -> Result<(), FieldFault> {
    match value {
        Value::String(text) if text.chars().any(char::is_control) => Err(FieldFault::new(
            path,
            "may not contain line breaks or other control characters",
        )),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check_no_control_chars(item, &format!("{path}/{i}"))),
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            check_no_control_chars(item, &format!("{path}/{}", pointer_token(key)))
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(template: &str, values: ControlValues, params: Value) -> Result<String, FieldFault> {
        let control = ControlTemplate::compile("c.txt".into(), template.into(), values)
            .map_err(|error| FieldFault::new("compile", error))?;
        control.render(params.as_object().unwrap())
    }

    #[test]
    fn renders_parameters_with_loops() {
        let text = check(
            "threshold {{ params.t }}\n{% for s in params.stats %}stat {{ s }}\n{% endfor %}",
            ControlValues::Reject,
            json!({"t": 2.5, "stats": ["mean", "max"]}),
        )
        .unwrap();
        assert_eq!(text, "threshold 2.5\nstat mean\nstat max\n");
    }

    #[test]
    fn a_value_cannot_add_a_line() {
        let fault = check(
            "label {{ params.label }}\n",
            ControlValues::Reject,
            json!({"label": "x\nthreshold 0"}),
        )
        .unwrap_err();
        assert_eq!(fault.path, "/parameters/label");
        let fault = check(
            "{{ params.l }}",
            ControlValues::Reject,
            json!({"l": ["ok", "a\rb"]}),
        )
        .unwrap_err();
        assert_eq!(fault.path, "/parameters/l/1");
    }

    #[test]
    fn json_mode_quotes_strings() {
        let text = check(
            "name = {{ params.n }}\ncount = {{ params.c }}\n",
            ControlValues::Json,
            json!({"n": "a\"b\nc", "c": 3}),
        )
        .unwrap();
        assert_eq!(text, "name = \"a\\\"b\\nc\"\ncount = 3\n");
    }

    #[test]
    fn undefined_names_are_errors() {
        assert!(check("{{ params.missing }}", ControlValues::Reject, json!({})).is_err());
        assert!(check("{{ nope }}", ControlValues::Reject, json!({})).is_err());
        assert!(
            ControlTemplate::compile("c".into(), "{% if %}".into(), ControlValues::Reject).is_err()
        );
    }
}
