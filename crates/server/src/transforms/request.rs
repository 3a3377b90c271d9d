//! The JSON request body (`{"inputs": {...}, "parameters": {...}}`) parsed as a stream.
//!
//! Records are written to their input files while they are parsed, so a 10 MB body never
//! becomes a 10 MB tree in memory: only one record at a time is materialised.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::records::{Layout, RecordWriter};
use super::{pointer_token, FieldFault, Format, WriteError};

/// Where each input of a request goes: the caller opens one sink per input name.
pub trait InputSinks {
    type Sink: Write;
    /// The layout of input `name`, or `None` when the tool has no such input.
    fn layout(&self, name: &str) -> Option<Layout>;
    fn open(&mut self, name: &str) -> std::io::Result<Self::Sink>;
    fn close(&mut self, name: &str, sink: Self::Sink) -> std::io::Result<()>;
}

/// What went wrong with a request body.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Not JSON at all (→ 400).
    #[error("the body is not valid JSON: {0}")]
    Malformed(String),
    /// JSON, but not what the tool takes (→ 422).
    #[error("{0}")]
    Invalid(FieldFault),
    #[error("cannot write an input: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses a JSON request from `reader`, writing inputs through `sinks`. Returns the
/// `parameters` object (empty when absent) and the names of the inputs given.
pub fn parse_json_request<S: InputSinks>(
    reader: impl Read,
    sinks: &mut S,
) -> Result<(Map<String, Value>, Vec<String>), RequestError> {
    let fault = RefCell::new(None);
    let io_error = RefCell::new(None);
    let mut outcome = RequestOutcome::default();
    let seed = RequestSeed {
        sinks: RefCell::new(sinks),
        fault: &fault,
        io_error: &io_error,
        outcome: &mut outcome,
    };
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let result = seed
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
    if let Some(error) = io_error.into_inner() {
        return Err(RequestError::Io(error));
    }
    if let Some(fault) = fault.into_inner() {
        return Err(RequestError::Invalid(fault));
    }
    if let Err(error) = result {
        return Err(match error.classify() {
            serde_json::error::Category::Data => {
                RequestError::Invalid(FieldFault::new("", error.to_string()))
            }
            _ => RequestError::Malformed(error.to_string()),
        });
    }
    let inputs = outcome.inputs.into_keys().collect();
    Ok((outcome.parameters.unwrap_or_default(), inputs))
}

#[derive(Default)]
struct RequestOutcome {
    parameters: Option<Map<String, Value>>,
    inputs: BTreeMap<String, ()>,
}

struct RequestSeed<'a, S: InputSinks> {
    sinks: RefCell<&'a mut S>,
    fault: &'a RefCell<Option<FieldFault>>,
    io_error: &'a RefCell<Option<std::io::Error>>,
    outcome: &'a mut RequestOutcome,
}

impl<'de, S: InputSinks> DeserializeSeed<'de> for RequestSeed<'_, S> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, S: InputSinks> Visitor<'de> for RequestSeed<'_, S> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with `inputs` and `parameters`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "inputs" => map.next_value_seed(InputsSeed {
                    sinks: &self.sinks,
                    fault: self.fault,
                    io_error: self.io_error,
                    given: &mut self.outcome.inputs,
                })?,
                "parameters" => {
                    let value: Value = map.next_value()?;
                    match value {
                        Value::Object(parameters) => self.outcome.parameters = Some(parameters),
                        Value::Null => {}
                        _ => return Err(fail(self.fault, "/parameters", "must be an object")),
                    }
                }
                other => {
                    map.next_value::<IgnoredAny>()?;
                    return Err(fail(
                        self.fault,
                        format!("/{}", pointer_token(other)),
                        "unknown field; a request has `inputs` and `parameters`",
                    ));
                }
            }
        }
        Ok(())
    }
}

struct InputsSeed<'a, 'b, S: InputSinks> {
    sinks: &'b RefCell<&'a mut S>,
    fault: &'b RefCell<Option<FieldFault>>,
    io_error: &'b RefCell<Option<std::io::Error>>,
    given: &'b mut BTreeMap<String, ()>,
}

impl<'de, S: InputSinks> DeserializeSeed<'de> for InputsSeed<'_, '_, S> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, S: InputSinks> Visitor<'de> for InputsSeed<'_, '_, S> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with one entry per input")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key::<String>()? {
            let path = format!("/inputs/{}", pointer_token(&name));
            let Some(layout) = self.sinks.borrow().layout(&name) else {
                return Err(fail(self.fault, path, "this tool has no such input"));
            };
            if self.given.insert(name.clone(), ()).is_some() {
                return Err(fail(self.fault, path, "input given twice"));
            }
            let sink = self
                .sinks
                .borrow_mut()
                .open(&name)
                .map_err(|error| io_fail(self.io_error, error))?;
            let mut writer = RecordWriter::new(layout.clone(), sink, path.clone());
            map.next_value_seed(InputSeed {
                writer: &mut writer,
                layout: &layout,
                fault: self.fault,
                io_error: self.io_error,
            })?;
            let sink = writer
                .finish()
                .map_err(|error| write_failed(self.fault, self.io_error, error))?;
            self.sinks
                .borrow_mut()
                .close(&name, sink)
                .map_err(|error| io_fail(self.io_error, error))?;
        }
        Ok(())
    }
}

struct InputSeed<'a, W: Write> {
    writer: &'a mut RecordWriter<W>,
    layout: &'a Layout,
    fault: &'a RefCell<Option<FieldFault>>,
    io_error: &'a RefCell<Option<std::io::Error>>,
}

impl<'de, W: Write> DeserializeSeed<'de> for InputSeed<'_, W> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.layout.format == Format::Json {
            let document = <Value as serde::Deserialize>::deserialize(deserializer)?;
            return self
                .writer
                .write_document(&document)
                .map_err(|error| write_failed(self.fault, self.io_error, error));
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de, W: Write> Visitor<'de> for InputSeed<'_, W> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.layout.format {
            Format::Raw => f.write_str("the file's text as a string"),
            _ => f.write_str("an array of records, or the file's text as a string"),
        }
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        self.writer
            .write_text(text)
            .map_err(|error| write_failed(self.fault, self.io_error, error))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.layout.format == Format::Raw {
            return Err(fail(
                self.fault,
                self.writer_path(),
                "this input takes the file's text as a string",
            ));
        }
        while let Some(record) = seq.next_element::<Value>()? {
            self.writer
                .write_record(&record)
                .map_err(|error| write_failed(self.fault, self.io_error, error))?;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(fail(self.fault, self.writer_path(), self.expected_text()))
    }
    fn visit_bool<E: de::Error>(self, _v: bool) -> Result<(), E> {
        Err(fail(self.fault, self.writer_path(), self.expected_text()))
    }
    fn visit_i64<E: de::Error>(self, _v: i64) -> Result<(), E> {
        Err(fail(self.fault, self.writer_path(), self.expected_text()))
    }
    fn visit_u64<E: de::Error>(self, _v: u64) -> Result<(), E> {
        Err(fail(self.fault, self.writer_path(), self.expected_text()))
    }
    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<(), E> {
        Err(fail(self.fault, self.writer_path(), self.expected_text()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(fail(self.fault, self.writer_path(), self.expected_text()))
    }
}

impl<W: Write> InputSeed<'_, W> {
    fn writer_path(&self) -> String {
        self.writer.path().to_owned()
    }
    fn expected_text(&self) -> &'static str {
        match self.layout.format {
            Format::Raw => "expected the file's text as a string",
            _ => "expected an array of records or the file's text as a string",
        }
    }
}

fn fail<E: de::Error>(
    slot: &RefCell<Option<FieldFault>>,
    path: impl Into<String>,
    message: impl Into<String>,
) -> E {
    fail_with(slot, FieldFault::new(path, message))
}

fn fail_with<E: de::Error>(slot: &RefCell<Option<FieldFault>>, fault: FieldFault) -> E {
    let message = fault.to_string();
    slot.borrow_mut().get_or_insert(fault);
    E::custom(message)
}

/// An input that could not be written: the client's fault, or the server's disk.
fn write_failed<E: de::Error>(
    fault: &RefCell<Option<FieldFault>>,
    io_error: &RefCell<Option<std::io::Error>>,
    error: WriteError,
) -> E {
    match error {
        WriteError::Invalid(invalid) => fail_with(fault, invalid),
        WriteError::Io(error) => io_fail(io_error, error),
    }
}

fn io_fail<E: de::Error>(slot: &RefCell<Option<std::io::Error>>, error: std::io::Error) -> E {
    let message = error.to_string();
    slot.borrow_mut().get_or_insert(error);
    E::custom(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Sinks that keep each input's bytes in memory.
    #[derive(Default)]
    struct MemorySinks {
        files: BTreeMap<String, String>,
    }

    impl InputSinks for MemorySinks {
        type Sink = Vec<u8>;
        fn layout(&self, name: &str) -> Option<Layout> {
            let (format, columns): (Format, &[&str]) = match name {
                "records" => (Format::Csv, &["sensor", "value"]),
                "words" => (Format::Lines, &[]),
                "doc" => (Format::Json, &[]),
                "blob" => (Format::Raw, &[]),
                _ => return None,
            };
            Some(Layout {
                format,
                columns: columns.iter().map(|c| c.to_string()).collect(),
                header: true,
            })
        }
        fn open(&mut self, _name: &str) -> std::io::Result<Vec<u8>> {
            Ok(Vec::new())
        }
        fn close(&mut self, name: &str, sink: Vec<u8>) -> std::io::Result<()> {
            self.files
                .insert(name.into(), String::from_utf8(sink).unwrap());
            Ok(())
        }
    }

    fn check(body: &str) -> Result<(Value, BTreeMap<String, String>), String> {
        let mut sinks = MemorySinks::default();
        match parse_json_request(body.as_bytes(), &mut sinks) {
            Ok((parameters, _)) => Ok((Value::Object(parameters), sinks.files)),
            Err(RequestError::Malformed(_)) => Err("malformed".into()),
            Err(RequestError::Invalid(fault)) => Err(format!("invalid {}", fault.path)),
            Err(RequestError::Io(error)) => Err(format!("io {error}")),
        }
    }

    #[test]
    fn inputs_are_converted_while_parsing() {
        let (parameters, files) = check(
            r#"{"parameters": {"window": 3}, "inputs": {"records": [{"sensor": "a", "value": 1}, ["b", 2]],
                "words": ["x", "y"], "doc": {"k": [1, 2]}, "blob": "raw text"}}"#,
        )
        .unwrap();
        assert_eq!(parameters, json!({"window": 3}));
        assert_eq!(files["records"], "sensor,value\na,1\nb,2\n");
        assert_eq!(files["words"], "x\ny\n");
        assert_eq!(files["doc"], "{\"k\":[1,2]}");
        assert_eq!(files["blob"], "raw text");
    }

    #[test]
    fn a_string_is_the_file_text() {
        let (_, files) = check(r#"{"inputs": {"records": "sensor,value\nq,9\n"}}"#).unwrap();
        assert_eq!(files["records"], "sensor,value\nq,9\n");
    }

    #[test]
    fn faults_carry_the_json_pointer() {
        let cases = [
            (r#"{"inputs": {"nope": []}}"#, "invalid /inputs/nope"),
            (
                r#"{"inputs": {"records": [{"sensor": "a"}]}}"#,
                "invalid /inputs/records/0/value",
            ),
            (r#"{"inputs": {"records": 5}}"#, "invalid /inputs/records"),
            (r#"{"inputs": {"blob": [1]}}"#, "invalid /inputs/blob"),
            (r#"{"parameters": [1]}"#, "invalid /parameters"),
            (r#"{"extra": 1}"#, "invalid /extra"),
            (
                r#"{"inputs": {"records": [{"sensor": "a", "value": 1}"#,
                "malformed",
            ),
            (r#"{"inputs": {}} trailing"#, "malformed"),
            ("[]", "invalid "),
        ];
        for (body, expected) in cases {
            assert_eq!(check(body).unwrap_err(), expected, "body {body}");
        }
    }
}
