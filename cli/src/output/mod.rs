//! Writing the vectors: JSONL rows or a `.npy` matrix, appended batch by batch in input
//! order, made durable before the checkpoint records them.
//!
//! A writer opens the output at the length the checkpoint recorded and cuts anything beyond
//! it (rows of a batch written but not yet checkpointed when the last run stopped), so a
//! resumed output never holds a duplicated or half-written row.

pub mod npy;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::CliError;
use crate::input::Record;
use crate::options::Format;

/// An output file being appended to.
pub struct Writer {
    /// The file, for error messages.
    path: PathBuf,
    /// JSONL or `.npy`.
    format: Format,
    /// Buffered handle, positioned at the end.
    file: BufWriter<File>,
    /// Rows in the file.
    rows: u64,
    /// Values per row, known from the first row on.
    dims: Option<u32>,
    /// Bytes in the file (including those still buffered).
    len: u64,
}

impl Writer {
    /// Opens `path` holding `rows` rows of `dims` values in its first `len` bytes, cutting
    /// anything after them. `len` 0 starts a new file.
    pub fn open(
        path: &Path,
        format: Format,
        rows: u64,
        dims: Option<u32>,
        len: u64,
    ) -> Result<Self, CliError> {
        let io = |source| CliError::io("open the output", path, source);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let actual = file.metadata().map_err(io)?.len();
        if actual < len {
            return Err(CliError::Resume(format!(
                "{}: it has {actual} bytes but the progress file records {len}; was it \
                 modified? Pass --restart to start over",
                path.display()
            )));
        }
        if format == Format::Npy && rows > 0 {
            check_npy(&mut file, path, dims)?;
        }
        file.set_len(len).map_err(io)?;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            format,
            file: BufWriter::with_capacity(1 << 20, file),
            rows,
            dims,
            len,
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Values per row, once known.
    pub fn dims(&self) -> Option<u32> {
        self.dims
    }

    /// Appends one row per record, in order. Every vector must have the length of the
    /// first row ever written.
    pub fn append(&mut self, records: &[Record], vectors: &[Vec<f32>]) -> Result<(), CliError> {
        for (record, vector) in records.iter().zip(vectors) {
            let dims = *self.dims.get_or_insert(vector.len() as u32);
            if vector.len() != dims as usize {
                return Err(CliError::Input {
                    line: record.line,
                    message: format!(
                        "the service answered {} values where earlier rows have {dims}",
                        vector.len()
                    ),
                });
            }
            let bytes = match self.format {
                Format::Jsonl => jsonl_row(record, vector),
                Format::Npy => {
                    if self.len == 0 {
                        self.write(&npy::header(0, u64::from(dims)))?;
                    }
                    common::wire::f32_le_bytes([vector.as_slice()])
                }
            };
            self.write(&bytes)?;
            self.rows += 1;
        }
        Ok(())
    }

    /// Makes every appended row durable (for `.npy`, after updating the header's row
    /// count) and returns the file's length, for the checkpoint.
    pub fn sync(&mut self) -> Result<u64, CliError> {
        let io = |source| CliError::io("write the output", &self.path, source);
        self.file.flush().map_err(io)?;
        if self.format == Format::Npy && self.len > 0 {
            let dims = self
                .dims
                .expect("a .npy with bytes has a row length; this is a bug");
            let file = self.file.get_mut();
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            file.write_all(&npy::header(self.rows, u64::from(dims)))
                .map_err(io)?;
            file.seek(SeekFrom::End(0)).map_err(io)?;
        }
        self.file.get_ref().sync_data().map_err(io)?;
        Ok(self.len)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        self.file
            .write_all(bytes)
            .map_err(|source| CliError::io("write the output", &self.path, source))?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// One JSONL row: `{"id": ..., "embedding": [...]}`, or `"line"` without an id field.
fn jsonl_row(record: &Record, vector: &[f32]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        line: Option<u64>,
        embedding: &'a [f32],
    }
    let row = Row {
        id: record.id.as_ref(),
        line: record.id.is_none().then_some(record.line),
        embedding: vector,
    };
    let mut bytes = serde_json::to_vec(&row).expect("a row serializes; this is a bug");
    bytes.push(b'\n');
    bytes
}

/// Checks that an existing `.npy` holds rows of `dims` float32 values.
fn check_npy(file: &mut File, path: &Path, dims: Option<u32>) -> Result<(), CliError> {
    let mut head = [0; npy::HEADER_LEN];
    std::io::Read::read_exact(file, &mut head)
        .map_err(|source| CliError::io("read the output", path, source))?;
    match npy::parse_header(&head) {
        Ok((_, found, npy::HEADER_LEN)) if Some(found) == dims.map(u64::from) => Ok(()),
        Ok((_, found, _)) => Err(CliError::Resume(format!(
            "{}: its rows have {found} values, the progress file says {dims:?}",
            path.display()
        ))),
        Err(message) => Err(CliError::Resume(format!("{}: {message}", path.display()))),
    }
}

/// A JSONL output row read back: its id (or line) and vector.
pub fn parse_jsonl_row(line: &str) -> Option<(Value, Vec<f32>)> {
    let value: Value = serde_json::from_str(line).ok()?;
    let key = value.get("id").or_else(|| value.get("line"))?.clone();
    let vector = value
        .get("embedding")?
        .as_array()?
        .iter()
        .map(|v| v.as_f64().map(|x| x as f32))
        .collect::<Option<Vec<f32>>>()?;
    Some((key, vector))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(line: u64, id: Option<Value>) -> Record {
        Record {
            line,
            id,
            text: String::new(),
            start_offset: 0,
            end_offset: 0,
            digest: String::new(),
        }
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("embed-jsonl-{}-{name}", std::process::id()))
    }

    #[test]
    fn jsonl_rows_round_trip_exactly() {
        let vector = [0.1f32, -1.0 / 3.0, 1e-30];
        let with_id = jsonl_row(&record(4, Some(json!("a"))), &vector);
        let text = String::from_utf8(with_id).unwrap();
        assert!(text.ends_with('\n'));
        assert_eq!(parse_jsonl_row(&text), Some((json!("a"), vector.to_vec())));
        let by_line = String::from_utf8(jsonl_row(&record(4, None), &vector)).unwrap();
        assert!(
            by_line.starts_with(r#"{"line":4,"embedding":[0.1,"#),
            "{by_line}"
        );
        assert_eq!(parse_jsonl_row(&by_line), Some((json!(4), vector.to_vec())));
    }

    #[test]
    fn reopening_cuts_unrecorded_bytes_and_npy_stays_valid() {
        let path = temp("writer.npy");
        let mut writer = Writer::open(&path, Format::Npy, 0, None, 0).unwrap();
        writer
            .append(
                &[record(1, None), record(2, None)],
                &[vec![1.0, 2.0], vec![3.0, 4.0]],
            )
            .unwrap();
        let len = writer.sync().unwrap();
        assert_eq!(len, (npy::HEADER_LEN + 16) as u64);
        // A batch written but never checkpointed, cut mid-row.
        writer
            .append(&[record(3, None)], &[vec![5.0, 6.0]])
            .unwrap();
        writer.file.flush().unwrap();
        drop(writer);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();

        let mut resumed = Writer::open(&path, Format::Npy, 2, Some(2), len).unwrap();
        resumed
            .append(&[record(3, None)], &[vec![5.0, 6.0]])
            .unwrap();
        assert!(resumed.append(&[record(4, None)], &[vec![1.0]]).is_err());
        resumed.sync().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(npy::parse_header(&bytes).unwrap(), (3, 2, npy::HEADER_LEN));
        let values: Vec<f32> = bytes[npy::HEADER_LEN..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

        assert!(matches!(
            Writer::open(&path, Format::Npy, 3, Some(2), 10_000),
            Err(CliError::Resume(_))
        ));
        assert!(matches!(
            Writer::open(&path, Format::Npy, 3, Some(7), len),
            Err(CliError::Resume(_))
        ));
        std::fs::remove_file(&path).unwrap();
    }
}
