//! An output file → JSON.

use std::io::{BufRead, Read};

use serde_json::{Map, Number, Value};

use super::Format;

/// Why an output file could not be turned into JSON (reported as `output-unparseable`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OutputParseError(pub String);

/// Reads an output file in `format` and returns its JSON form:
/// csv/tsv → array of objects (keys from the header or the declared columns, numbers
/// typed), jsonl → array, json → the document, lines → array of strings, raw → a string.
pub fn to_json(
    format: Format,
    columns: &[String],
    header: bool,
    reader: impl Read,
) -> Result<Value, OutputParseError> {
    match format {
        Format::Csv | Format::Tsv => tabular(format, columns, header, reader),
        Format::Jsonl => {
            let mut values = Vec::new();
            for (index, line) in std::io::BufReader::new(reader).lines().enumerate() {
                let line = line.map_err(|error| OutputParseError(error.to_string()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let value = serde_json::from_str(&line).map_err(|error| {
                    OutputParseError(format!("line {}: not JSON: {error}", index + 1))
                })?;
                values.push(value);
            }
            Ok(Value::Array(values))
        }
        Format::Json => serde_json::from_reader(reader)
            .map_err(|error| OutputParseError(format!("not JSON: {error}"))),
        Format::Lines => {
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(reader).lines() {
                let line = line.map_err(|_| OutputParseError("not UTF-8 text".into()))?;
                lines.push(Value::String(line));
            }
            Ok(Value::Array(lines))
        }
        Format::Raw => {
            let mut text = String::new();
            let mut reader = reader;
            reader
                .read_to_string(&mut text)
                .map_err(|_| OutputParseError("not UTF-8 text".into()))?;
            Ok(Value::String(text))
        }
    }
}

fn tabular(
    format: Format,
    columns: &[String],
    header: bool,
    reader: impl Read,
) -> Result<Value, OutputParseError> {
    let mut csv_reader = csv::ReaderBuilder::new()
        .delimiter(format.delimiter())
        .has_headers(header)
        .flexible(false)
        .from_reader(reader);
    let keys: Vec<String> = if header {
        csv_reader
            .headers()
            .map_err(|error| OutputParseError(format!("header: {error}")))?
            .iter()
            .map(str::to_owned)
            .collect()
    } else {
        columns.to_vec()
    };
    let mut rows = Vec::new();
    for (index, record) in csv_reader.records().enumerate() {
        let record =
            record.map_err(|error| OutputParseError(format!("row {}: {error}", index + 1)))?;
        let mut row = Map::new();
        for (position, field) in record.iter().enumerate() {
            let key = keys
                .get(position)
                .cloned()
                .unwrap_or_else(|| format!("column{}", position + 1));
            row.insert(key, typed(field));
        }
        rows.push(Value::Object(row));
    }
    Ok(Value::Array(rows))
}

/// A field as JSON: integers and finite decimals become numbers, empty fields null, the
/// rest strings. Text that only looks numeric with leading zeros (`007`) stays a string,
/// so that identifiers survive the round trip.
fn typed(field: &str) -> Value {
    if field.is_empty() {
        return Value::Null;
    }
    let leading_zero = field.len() > 1 && field.starts_with('0') && !field.starts_with("0.");
    if !leading_zero {
        if let Ok(integer) = field.parse::<i64>() {
            return Value::Number(integer.into());
        }
        if field.bytes().any(|b| b.is_ascii_digit()) && !field.contains(['x', 'X', 'i', 'n', 'N']) {
            if let Some(number) = field.parse::<f64>().ok().and_then(Number::from_f64) {
                return Value::Number(number);
            }
        }
    }
    Value::String(field.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(format: Format, columns: &[&str], header: bool, text: &str) -> Result<Value, String> {
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        to_json(format, &columns, header, text.as_bytes()).map_err(|error| error.0)
    }

    #[test]
    fn csv_with_header_becomes_typed_records() {
        let value = check(
            Format::Csv,
            &[],
            true,
            "sensor,kind,value,at\ns1,stat,65,\n007,alert,92.5,t3\n",
        )
        .unwrap();
        assert_eq!(
            value,
            json!([
                {"sensor": "s1", "kind": "stat", "value": 65, "at": null},
                {"sensor": "007", "kind": "alert", "value": 92.5, "at": "t3"}
            ])
        );
    }

    #[test]
    fn tsv_without_header_uses_declared_columns() {
        let value = check(Format::Tsv, &["word", "count"], false, "the\t3\nnan\t1e2\n").unwrap();
        assert_eq!(
            value,
            json!([{"word": "the", "count": 3}, {"word": "nan", "count": 100.0}])
        );
    }

    #[test]
    fn ragged_csv_is_an_error_naming_the_row() {
        let error = check(Format::Csv, &[], true, "a,b\n1,2\n3\n").unwrap_err();
        assert!(error.contains("row 2"), "{error}");
    }

    #[test]
    fn other_formats() {
        assert_eq!(
            check(Format::Jsonl, &[], false, "{\"a\":1}\n\n[2]\n").unwrap(),
            json!([{"a": 1}, [2]])
        );
        assert!(check(Format::Jsonl, &[], false, "{\"a\":1}\nnope\n")
            .unwrap_err()
            .contains("line 2"));
        assert_eq!(
            check(Format::Json, &[], false, "{\"k\": true}").unwrap(),
            json!({"k": true})
        );
        assert_eq!(
            check(Format::Lines, &[], false, "b\na\n").unwrap(),
            json!(["b", "a"])
        );
        assert_eq!(check(Format::Raw, &[], false, "x y").unwrap(), json!("x y"));
    }
}
