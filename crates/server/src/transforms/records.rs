//! JSON records → an input file, one record at a time.

use std::io::Write;

use serde_json::Value;

use super::{FieldFault, Format, WriteError};

/// How an input file is laid out (from the tool declaration).
#[derive(Debug, Clone)]
pub struct Layout {
    pub format: Format,
    /// Column order for csv/tsv (and the keys kept for jsonl when not empty).
    pub columns: Vec<String>,
    /// Whether csv/tsv files start with a header line.
    pub header: bool,
}

/// Writes JSON values in a tool's input format. `path` in errors is the JSON pointer of
/// the input (`/inputs/records`), with the record index appended.
pub struct RecordWriter<W: Write> {
    layout: Layout,
    /// The raw sink until the first csv/tsv row, when the csv writer takes it over.
    out: Option<W>,
    csv: Option<csv::Writer<W>>,
    /// Columns learnt from the first record when the tool declares none.
    columns: Vec<String>,
    header_written: bool,
    /// The file's text was given whole; nothing is added to it.
    wrote_text: bool,
    path: String,
    count: usize,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(layout: Layout, out: W, path: impl Into<String>) -> Self {
        let columns = layout.columns.clone();
        RecordWriter {
            layout,
            out: Some(out),
            csv: None,
            columns,
            header_written: false,
            wrote_text: false,
            path: path.into(),
            count: 0,
        }
    }

    /// The JSON pointer of the input being written.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Writes the text of a whole file as given (a string instead of an array of records).
    pub fn write_text(&mut self, text: &str) -> Result<(), WriteError> {
        self.wrote_text = true;
        let path = self.path.clone();
        Ok(self.plain(&path)?.write_all(text.as_bytes())?)
    }

    /// Writes a whole JSON document (format `json`).
    pub fn write_document(&mut self, value: &Value) -> Result<(), WriteError> {
        let path = self.path.clone();
        serde_json::to_writer(self.plain(&path)?, value)
            .map_err(|error| WriteError::Io(error.into()))
    }

    /// Writes one element of the input's array.
    pub fn write_record(&mut self, record: &Value) -> Result<(), WriteError> {
        let index = self.count;
        self.count += 1;
        let path = format!("{}/{}", self.path, index);
        match self.layout.format {
            Format::Csv | Format::Tsv => self.write_row(record, &path),
            Format::Jsonl => {
                let out = self.plain(&path)?;
                serde_json::to_writer(&mut *out, record)
                    .and_then(|()| out.write_all(b"\n").map_err(serde_json::Error::io))
                    .map_err(|error| WriteError::Io(error.into()))
            }
            Format::Lines => {
                let text = scalar_text(record)
                    .ok_or_else(|| FieldFault::new(&path, "expected a string or number"))?;
                if text.contains(['\n', '\r']) {
                    return Err(
                        FieldFault::new(&path, "a line may not contain a line break").into(),
                    );
                }
                Ok(writeln!(self.plain(&path)?, "{text}")?)
            }
            Format::Json | Format::Raw => {
                Err(FieldFault::new(&path, "this input takes a whole document, not records").into())
            }
        }
    }

    fn write_row(&mut self, record: &Value, path: &str) -> Result<(), WriteError> {
        let fields: Vec<String> = match record {
            Value::Object(map) => {
                if self.columns.is_empty() {
                    self.columns = map.keys().cloned().collect();
                }
                if let Some(unknown) = map.keys().find(|key| !self.columns.contains(key)) {
                    return Err(WriteError::Invalid(FieldFault::new(
                        format!("{path}/{}", super::pointer_token(unknown)),
                        format!(
                            "unknown column; the columns are: {}",
                            self.columns.join(", ")
                        ),
                    )));
                }
                let mut fields = Vec::with_capacity(self.columns.len());
                for column in &self.columns {
                    let field_path = format!("{path}/{}", super::pointer_token(column));
                    let value = map
                        .get(column)
                        .ok_or_else(|| FieldFault::new(&field_path, "missing column"))?;
                    fields.push(self.field_text(value, &field_path)?);
                }
                fields
            }
            Value::Array(items) => {
                if !self.columns.is_empty() && items.len() != self.columns.len() {
                    return Err(WriteError::Invalid(FieldFault::new(
                        path,
                        format!(
                            "expected {} fields ({}), found {}",
                            self.columns.len(),
                            self.columns.join(", "),
                            items.len()
                        ),
                    )));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, value)| self.field_text(value, &format!("{path}/{i}")))
                    .collect::<Result<_, _>>()?
            }
            _ => {
                return Err(FieldFault::new(
                    path,
                    "expected a record (an object or an array of fields)",
                )
                .into())
            }
        };
        let delimiter = self.layout.format.delimiter();
        if self.csv.is_none() {
            // The csv writer takes the sink over; text passthrough is never mixed with
            // records in one input.
            let sink = self
                .out
                .take()
                .ok_or_else(|| FieldFault::new(path, "records cannot follow text"))?;
            self.csv = Some(
                csv::WriterBuilder::new()
                    .delimiter(delimiter)
                    .flexible(self.columns.is_empty())
                    .from_writer(sink),
            );
        }
        let header_needed = self.layout.header && !self.header_written && !self.columns.is_empty();
        let writer = self.csv.as_mut().expect("csv writer was just created");
        if header_needed {
            writer
                .write_record(&self.columns)
                .map_err(|error| WriteError::Io(error.into()))?;
            self.header_written = true;
        }
        writer
            .write_record(&fields)
            .map_err(|error| WriteError::Io(error.into()))
    }

    fn plain(&mut self, path: &str) -> Result<&mut W, FieldFault> {
        self.out
            .as_mut()
            .ok_or_else(|| FieldFault::new(path, "text cannot follow records"))
    }

    fn field_text(&self, value: &Value, path: &str) -> Result<String, FieldFault> {
        let text = match value {
            Value::Null => String::new(),
            other => scalar_text(other).ok_or_else(|| {
                FieldFault::new(path, "expected a string, number, boolean or null")
            })?,
        };
        if self.layout.format == Format::Tsv && text.contains(['\t', '\n', '\r']) {
            return Err(FieldFault::new(
                path,
                "a TSV value may not contain a tab or a line break",
            ));
        }
        Ok(text)
    }

    /// Flushes everything and returns the sink. For csv/tsv with a header and no records,
    /// the header is still written so the program sees a well-formed empty file.
    pub fn finish(mut self) -> Result<W, WriteError> {
        if self.layout.format.is_tabular()
            && self.layout.header
            && self.count == 0
            && !self.wrote_text
            && !self.columns.is_empty()
        {
            let mut header = csv::WriterBuilder::new()
                .delimiter(self.layout.format.delimiter())
                .from_writer(Vec::new());
            header
                .write_record(&self.columns)
                .map_err(|error| WriteError::Io(error.into()))?;
            let bytes = header
                .into_inner()
                .map_err(|error| WriteError::Io(error.into_error()))?;
            let path = self.path.clone();
            self.plain(&path)?.write_all(&bytes)?;
        }
        let mut out = match self.csv.take() {
            Some(writer) => writer
                .into_inner()
                .map_err(|error| WriteError::Io(error.into_error()))?,
            None => self
                .out
                .take()
                .ok_or_else(|| FieldFault::new(&self.path, "sink already taken"))?,
        };
        out.flush()?;
        Ok(out)
    }
}

/// Checks the header of a csv/tsv file against the declared columns; when the same
/// columns come in another order, rewrites the file in the declared order.
pub fn normalize_tabular_file(
    layout: &Layout,
    path: &std::path::Path,
    pointer: &str,
) -> Result<(), WriteError> {
    // Reading: the client's file may be invalid, or the server's disk may fail.
    let invalid = |error: csv::Error| -> WriteError {
        if error.is_io_error() {
            WriteError::Io(error.into())
        } else {
            FieldFault::new(
                pointer,
                format!("not valid {}: {error}", layout.format.as_str()),
            )
            .into()
        }
    };
    let io = |error: csv::Error| WriteError::Io(error.into());
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(layout.format.delimiter())
        .from_path(path)
        .map_err(invalid)?;
    let header: Vec<String> = reader
        .headers()
        .map_err(invalid)?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    if header == layout.columns {
        return Ok(());
    }
    check_header(layout, &header).map_err(|message| FieldFault::new(pointer, message))?;
    let order: Vec<usize> = layout
        .columns
        .iter()
        .map(|column| {
            header
                .iter()
                .position(|h| h == column)
                .expect("checked above")
        })
        .collect();
    let rewritten = path.with_extension("reordered");
    let mut rewrite = || {
        let mut writer = csv::WriterBuilder::new()
            .delimiter(layout.format.delimiter())
            .from_path(&rewritten)
            .map_err(io)?;
        writer.write_record(&layout.columns).map_err(io)?;
        for (index, record) in reader.records().enumerate() {
            let record = record.map_err(|error| -> WriteError {
                if error.is_io_error() {
                    WriteError::Io(error.into())
                } else {
                    FieldFault::new(pointer, format!("row {}: {error}", index + 1)).into()
                }
            })?;
            writer
                .write_record(order.iter().map(|&i| record.get(i).unwrap_or("")))
                .map_err(io)?;
        }
        writer.flush()?;
        std::fs::rename(&rewritten, path)?;
        Ok(())
    };
    // A refused file leaves no half-written copy beside it (whoever staged `path` only
    // knows that name).
    rewrite().inspect_err(|_| {
        let _ = std::fs::remove_file(&rewritten);
    })
}

/// A header that is not exactly the declared columns must hold each of them once, in any
/// order (the file is then reordered), and nothing else.
fn check_header(layout: &Layout, header: &[String]) -> Result<(), String> {
    let expected = layout.columns.join(",");
    if header.iter().all(String::is_empty) {
        return Err(format!(
            "the file is empty; it must start with the header {expected}"
        ));
    }
    if let Some(missing) = layout
        .columns
        .iter()
        .find(|column| !header.contains(column))
    {
        return Err(format!(
            "the header lacks the column `{missing}`; expected {expected}"
        ));
    }
    if let Some(unknown) = header
        .iter()
        .find(|column| !layout.columns.contains(column))
    {
        return Err(format!(
            "the header has an unknown column `{unknown}`; expected {expected}"
        ));
    }
    Ok(())
}

/// The text of a scalar JSON value as a legacy program expects it.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn layout(format: Format, columns: &[&str], header: bool) -> Layout {
        Layout {
            format,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            header,
        }
    }

    /// Writes `records` through a writer and returns the file text or the first fault.
    fn check(layout: Layout, records: Value) -> Result<String, FieldFault> {
        let write = || -> Result<String, WriteError> {
            let mut writer = RecordWriter::new(layout, Vec::new(), "/inputs/data");
            match records {
                Value::Array(items) => {
                    for item in &items {
                        writer.write_record(item)?;
                    }
                }
                Value::String(text) => writer.write_text(&text)?,
                other => writer.write_document(&other)?,
            }
            Ok(String::from_utf8(writer.finish()?).unwrap())
        };
        write().map_err(invalid)
    }

    /// The client's fault in a write error (a test's writes into memory cannot fail).
    fn invalid(error: WriteError) -> FieldFault {
        match error {
            WriteError::Invalid(fault) => fault,
            WriteError::Io(error) => panic!("an I/O error: {error}"),
        }
    }

    #[test]
    fn csv_objects_follow_declared_column_order_with_quoting() {
        let text = check(
            layout(Format::Csv, &["sensor", "value"], true),
            json!([{"value": 1.5, "sensor": "a,b"}, {"sensor": "c", "value": null}]),
        )
        .unwrap();
        assert_eq!(text, "sensor,value\n\"a,b\",1.5\nc,\n");
    }

    #[test]
    fn csv_arrays_and_learnt_columns() {
        assert_eq!(
            check(
                layout(Format::Csv, &["a", "b"], false),
                json!([[1, true], ["x", "y"]])
            )
            .unwrap(),
            "1,true\nx,y\n"
        );
        assert_eq!(
            check(
                layout(Format::Csv, &[], true),
                json!([{"x": 1, "y": 2}, {"x": 3, "y": 4}])
            )
            .unwrap(),
            "x,y\n1,2\n3,4\n"
        );
    }

    #[test]
    fn empty_csv_still_has_its_header() {
        assert_eq!(
            check(layout(Format::Csv, &["a", "b"], true), json!([])).unwrap(),
            "a,b\n"
        );
    }

    #[test]
    fn record_faults_name_the_field() {
        let cases = [
            (json!([{"a": 1}]), "/inputs/data/0/b", "missing column"),
            (
                json!([{"a": 1, "b": 2, "c": 3}]),
                "/inputs/data/0/c",
                "unknown column",
            ),
            (
                json!([{"a": 1, "b": 2}, [1]]),
                "/inputs/data/1",
                "expected 2 fields",
            ),
            (
                json!([{"a": {"x": 1}, "b": 2}]),
                "/inputs/data/0/a",
                "expected a string",
            ),
            (json!([5]), "/inputs/data/0", "expected a record"),
        ];
        for (records, path, message) in cases {
            let fault = check(layout(Format::Csv, &["a", "b"], true), records).unwrap_err();
            assert_eq!(fault.path, path);
            assert!(fault.message.contains(message), "{fault}");
        }
    }

    #[test]
    fn tabular_files_are_checked_and_reordered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        let layout = layout(Format::Csv, &["sensor", "value"], true);
        let cases = [
            ("sensor,value\na,1\n", Ok("sensor,value\na,1\n")),
            (
                "value,sensor\n1,a\n2,\"b,c\"\n",
                Ok("sensor,value\na,1\n\"b,c\",2\n"),
            ),
            ("sensor\na\n", Err("lacks the column `value`")),
            ("sensor,value,x\na,1,2\n", Err("unknown column `x`")),
            ("", Err("empty")),
            // Refused while it is being rewritten.
            ("value,sensor\n1,a\n1,2,3\n", Err("row 2")),
        ];
        for (text, expected) in cases {
            std::fs::write(&path, text).unwrap();
            let result = normalize_tabular_file(&layout, &path, "/inputs/records");
            match expected {
                Ok(rewritten) => {
                    result.unwrap();
                    assert_eq!(std::fs::read_to_string(&path).unwrap(), rewritten);
                }
                Err(message) => {
                    let fault = invalid(result.unwrap_err());
                    assert_eq!(fault.path, "/inputs/records");
                    assert!(fault.message.contains(message), "{fault}");
                }
            }
            let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .map(|entry| entry.unwrap().file_name())
                .collect();
            assert_eq!(left, [path.file_name().unwrap()], "only the input itself");
        }
    }

    #[test]
    fn tsv_refuses_tabs_and_newlines() {
        let fault = check(layout(Format::Tsv, &["a"], false), json!([["x\ty"]])).unwrap_err();
        assert_eq!(fault.path, "/inputs/data/0/0");
        assert_eq!(
            check(layout(Format::Tsv, &["a", "b"], true), json!([[1, 2]])).unwrap(),
            "a\tb\n1\t2\n"
        );
    }

    #[test]
    fn jsonl_lines_json_and_text() {
        assert_eq!(
            check(layout(Format::Jsonl, &[], false), json!([{"a": 1}, [2]])).unwrap(),
            "{\"a\":1}\n[2]\n"
        );
        assert_eq!(
            check(layout(Format::Lines, &[], false), json!(["b", 1])).unwrap(),
            "b\n1\n"
        );
        assert!(check(layout(Format::Lines, &[], false), json!(["a\nb"])).is_err());
        assert_eq!(
            check(layout(Format::Json, &[], false), json!({"k": [1]})).unwrap(),
            "{\"k\":[1]}"
        );
        assert_eq!(
            check(layout(Format::Raw, &[], false), json!("as is\n")).unwrap(),
            "as is\n"
        );
    }
}
