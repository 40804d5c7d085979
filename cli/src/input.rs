//! Reading the JSONL input: one JSON object per line, the text in a named field.
//!
//! The reader starts at any byte offset (a resumed job seeks straight past the lines it has
//! done) and reports, with every record, where the next line starts, so the checkpoint can
//! record how far the input has been consumed.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::CliError;

/// One input line to embed.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line number in the input file.
    pub line: u64,
    /// The `--id-field` value, when one is configured.
    pub id: Option<Value>,
    /// The text to embed.
    pub text: String,
    /// Byte offset where this line starts.
    pub start_offset: u64,
    /// Byte offset just past this line: where the next line starts.
    pub end_offset: u64,
    /// SHA-256 of the line's bytes (newline excluded), so a resumed job can check that the
    /// input was not replaced.
    pub digest: String,
}

/// Which fields of each line to read.
#[derive(Debug, Clone)]
pub struct Fields {
    /// The field holding the text.
    pub text: String,
    /// The field copied into the output as `id`, if any.
    pub id: Option<String>,
}

/// Reads records from a JSONL file, from a given line on.
pub struct JsonlReader {
    /// The file, for error messages.
    path: PathBuf,
    /// Buffered file handle, positioned at `offset`.
    reader: BufReader<File>,
    /// Fields to extract.
    fields: Fields,
    /// Byte offset of the next line.
    offset: u64,
    /// 1-based number of the next line.
    next_line: u64,
    /// Reused line buffer.
    buffer: Vec<u8>,
}

impl JsonlReader {
    /// Opens `path` and positions it at `offset`, which starts line `next_line` (1-based).
    pub fn open(
        path: &Path,
        fields: Fields,
        offset: u64,
        next_line: u64,
    ) -> Result<Self, CliError> {
        let io = |source| CliError::io("read the input", path, source);
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if offset > len {
            return Err(CliError::InputChanged(format!(
                "{} has {len} bytes but the progress file says {offset} were already embedded",
                path.display()
            )));
        }
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            fields,
            offset,
            next_line,
            buffer: Vec::new(),
        })
    }

    /// The next record, `None` at the end of the file. Blank lines are skipped; a line that
    /// is not a JSON object with a string text field is an error naming the line.
    pub fn next_record(&mut self) -> Result<Option<Record>, CliError> {
        loop {
            self.buffer.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.buffer)
                .map_err(|source| CliError::io("read the input", &self.path, source))?;
            if read == 0 {
                return Ok(None);
            }
            let line = self.next_line;
            let start_offset = self.offset;
            self.next_line += 1;
            self.offset += read as u64;
            let bytes = trim_newline(&self.buffer);
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let (id, text) = parse_line(bytes, &self.fields)
                .map_err(|message| CliError::Input { line, message })?;
            return Ok(Some(Record {
                line,
                id,
                text,
                start_offset,
                end_offset: self.offset,
                digest: line_digest(bytes),
            }));
        }
    }
}

/// Counts the non-blank lines of `path` from byte `offset` on (the progress bar's total).
pub fn count_records(path: &Path, offset: u64) -> Result<u64, CliError> {
    let io = |source| CliError::io("read the input", path, source);
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut count = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
            return Ok(count);
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            count += 1;
        }
    }
}

/// SHA-256 of one line's bytes, hex.
pub fn line_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The bytes of the line at `start..end`, newline excluded: used to check, on resume, that
/// the last embedded line is still the same.
pub fn line_at(path: &Path, start: u64, end: u64) -> Result<Vec<u8>, CliError> {
    let io = |source| CliError::io("read the input", path, source);
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut bytes = Vec::new();
    let mut reader = BufReader::new(file).take(end.saturating_sub(start));
    reader.read_to_end(&mut bytes).map_err(io)?;
    Ok(trim_newline(&bytes).to_vec())
}

fn trim_newline(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

/// Extracts the id and the text of one line, or says what is wrong with it.
fn parse_line(bytes: &[u8], fields: &Fields) -> Result<(Option<Value>, String), String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(mut object) = value else {
        return Err(format!("expected a JSON object, found {}", kind(&value)));
    };
    let text = match object.remove(&fields.text) {
        Some(Value::String(text)) => text,
        Some(other) => {
            return Err(format!(
                "field `{}` must be a string, found {}",
                fields.text,
                kind(&other)
            ));
        }
        None => return Err(format!("field `{}` is missing", fields.text)),
    };
    let id = match &fields.id {
        None => None,
        Some(name) => match object.remove(name) {
            Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
            Some(other) => {
                return Err(format!(
                    "field `{name}` must be a string or a number, found {}",
                    kind(&other)
                ));
            }
            None => return Err(format!("field `{name}` is missing")),
        },
    };
    Ok((id, text))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(id: Option<&str>) -> Fields {
        Fields {
            text: "text".into(),
            id: id.map(String::from),
        }
    }

    #[test]
    fn lines_give_text_and_id_or_a_clear_error() {
        let with_id = fields(Some("doc"));
        assert_eq!(
            parse_line(br#"{"text": "hi", "doc": 7}"#, &with_id).unwrap(),
            (Some(Value::from(7)), "hi".to_string())
        );
        assert_eq!(
            parse_line(br#"{"text": "", "doc": "a"}"#, &with_id).unwrap(),
            (Some(Value::from("a")), String::new())
        );
        let cases: [(&[u8], &str); 5] = [
            (br#"{"body": "hi", "doc": 1}"#, "field `text` is missing"),
            (
                br#"{"text": 3, "doc": 1}"#,
                "field `text` must be a string, found a number",
            ),
            (br#"{"text": "hi"}"#, "field `doc` is missing"),
            (br#"[1, 2]"#, "expected a JSON object, found an array"),
            (b"{\"text\": \"hi", "not valid JSON"),
        ];
        for (line, message) in cases {
            let error = parse_line(line, &with_id).unwrap_err();
            assert!(error.contains(message), "{error} lacks {message}");
        }
    }

    #[test]
    fn reader_skips_blank_lines_and_resumes_at_an_offset() {
        let path = std::env::temp_dir().join(format!("embed-jsonl-input-{}", std::process::id()));
        std::fs::write(
            &path,
            "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\r\n{\"text\": \"c\"}",
        )
        .unwrap();
        let mut reader = JsonlReader::open(&path, fields(None), 0, 1).unwrap();
        let first = reader.next_record().unwrap().unwrap();
        let second = reader.next_record().unwrap().unwrap();
        assert_eq!((first.line, first.text.as_str()), (1, "a"));
        assert_eq!((second.line, second.text.as_str()), (3, "b"));
        assert_eq!(second.start_offset, first.end_offset + 1);
        assert_eq!(count_records(&path, 0).unwrap(), 3);
        assert_eq!(count_records(&path, second.end_offset).unwrap(), 1);
        assert_eq!(
            line_digest(&line_at(&path, second.start_offset, second.end_offset).unwrap()),
            second.digest
        );

        let mut resumed = JsonlReader::open(&path, fields(None), second.end_offset, 4).unwrap();
        let third = resumed.next_record().unwrap().unwrap();
        assert_eq!((third.line, third.text.as_str()), (4, "c"));
        assert!(resumed.next_record().unwrap().is_none());
        assert!(matches!(
            JsonlReader::open(&path, fields(None), 10_000, 1),
            Err(CliError::InputChanged(_))
        ));
        std::fs::remove_file(&path).unwrap();
    }
}
