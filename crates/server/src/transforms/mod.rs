//! Conversions between JSON and the file formats legacy programs read and write.
//!
//! `records` turns JSON records into an input file one record at a time (never the whole
//! dataset in memory); `outputs` turns an output file back into JSON; `request` parses a
//! JSON request body as a stream, writing each input as it goes. All of it is synchronous
//! and runs on blocking threads: it is pure data plumbing with no knowledge of HTTP or jobs.

pub mod outputs;
pub mod records;
pub mod request;

use serde::Deserialize;

/// A file format a tool reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values, RFC 4180 quoting.
    Csv,
    /// Tab-separated values; values may not contain tabs or line breaks.
    Tsv,
    /// One JSON document per line.
    Jsonl,
    /// One JSON document.
    Json,
    /// Plain text, one item per line.
    Lines,
    /// Bytes passed through untouched.
    Raw,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Jsonl => "jsonl",
            Format::Json => "json",
            Format::Lines => "lines",
            Format::Raw => "raw",
        }
    }

    /// True for formats whose JSON form is an array of records with columns.
    pub fn is_tabular(self) -> bool {
        matches!(self, Format::Csv | Format::Tsv)
    }

    pub fn default_media_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv",
            Format::Tsv => "text/tab-separated-values",
            Format::Jsonl => "application/x-ndjson",
            Format::Json => "application/json",
            Format::Lines => "text/plain",
            Format::Raw => "application/octet-stream",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Jsonl => "jsonl",
            Format::Json => "json",
            Format::Lines => "txt",
            Format::Raw => "bin",
        }
    }

    fn delimiter(self) -> u8 {
        if self == Format::Tsv {
            b'\t'
        } else {
            b','
        }
    }
}

/// Where in a request a conversion failed, as a JSON pointer, plus what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldFault {
    pub path: String,
    pub message: String,
}

impl FieldFault {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldFault {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Why an input could not be written: the client's data (`Invalid`, a `422`), or the
/// server's own disk (`Io`: full, failing), which is never the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Invalid(FieldFault),
    #[error("cannot write an input: {0}")]
    Io(#[from] std::io::Error),
}

impl From<FieldFault> for WriteError {
    fn from(fault: FieldFault) -> WriteError {
        WriteError::Invalid(fault)
    }
}

/// Escapes one JSON-pointer token (RFC 6901).
pub fn pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}
