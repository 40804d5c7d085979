//! The progress file beside the output (`OUTPUT.progress.json`): how many rows the output
//! holds, how long it is, and how far the input has been read.
//!
//! Order of writes for every batch: rows to the output, output synced to disk, then this
//! file replaced atomically (written to a temporary file, synced, renamed over the old one).
//! Whatever instant a run dies at, the progress file describes a prefix of the output that
//! is complete on disk; the next run cuts the output back to that prefix and continues
//! from the input line after it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CliError;
use crate::input::{self, Record};
use crate::options::{Format, Options};

/// Version of the progress file layout.
const VERSION: u32 = 1;

/// What a job computes: a resumed run must ask for the same, or its rows would not match
/// the ones already written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSettings {
    /// The input file (absolute path).
    pub input: PathBuf,
    /// The output format.
    pub format: Format,
    /// The text field.
    pub text_field: String,
    /// The id field.
    pub id_field: Option<String>,
    /// Queries or documents.
    pub query: bool,
    /// Task description for queries.
    pub instruction: Option<String>,
    /// Matryoshka size.
    pub dimensions: Option<u32>,
    /// Model name.
    pub model: Option<String>,
}

impl JobSettings {
    /// The settings of `options`.
    pub fn from_options(options: &Options) -> Result<Self, CliError> {
        let input = std::fs::canonicalize(&options.input)
            .map_err(|source| CliError::io("open the input", &options.input, source))?;
        Ok(Self {
            input,
            format: options.format(),
            text_field: options.text_field.clone(),
            id_field: options.id_field.clone(),
            query: options.query,
            instruction: options.instruction.clone(),
            dimensions: options.dimensions,
            model: options.model.clone(),
        })
    }
}

/// The last input line embedded: checked on resume so that a replaced input is noticed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastLine {
    /// Byte offset where it starts.
    pub start: u64,
    /// SHA-256 of its bytes.
    pub digest: String,
}

/// The durable state of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Layout version.
    pub version: u32,
    /// What the job computes.
    pub settings: JobSettings,
    /// Rows in the output.
    pub rows: u64,
    /// Values per row, once known.
    pub dims: Option<u32>,
    /// Bytes of the output that hold those rows (and the `.npy` header).
    pub output_bytes: u64,
    /// Byte offset in the input of the first line not yet embedded.
    pub input_offset: u64,
    /// 1-based number of that line.
    pub next_line: u64,
    /// The last line embedded.
    pub last_line: Option<LastLine>,
}

impl Checkpoint {
    /// A job that has done nothing yet.
    pub fn fresh(settings: JobSettings) -> Self {
        Self {
            version: VERSION,
            settings,
            rows: 0,
            dims: None,
            output_bytes: 0,
            input_offset: 0,
            next_line: 1,
            last_line: None,
        }
    }

    /// Records that the output now holds `rows` rows of `dims` values in `output_bytes`
    /// bytes, the last of them from `last`.
    pub fn advance(&mut self, rows: u64, dims: Option<u32>, output_bytes: u64, last: &Record) {
        self.rows = rows;
        self.dims = dims;
        self.output_bytes = output_bytes;
        self.input_offset = last.end_offset;
        self.next_line = last.line + 1;
        self.last_line = Some(LastLine {
            start: last.start_offset,
            digest: last.digest.clone(),
        });
    }

    /// Reads the progress file at `path`, `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<Self>, CliError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CliError::io("read the progress file", path, source)),
        };
        let checkpoint: Self = serde_json::from_str(&text).map_err(|e| {
            CliError::Resume(format!("{}: unreadable progress file: {e}", path.display()))
        })?;
        if checkpoint.version != VERSION {
            return Err(CliError::Resume(format!(
                "{}: progress file version {} (this program writes {VERSION})",
                path.display(),
                checkpoint.version
            )));
        }
        Ok(Some(checkpoint))
    }

    /// Replaces the progress file at `path` atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), CliError> {
        let io = |source| CliError::io("write the progress file", path, source);
        let temporary = path.with_extension("json.tmp");
        let mut file = File::create(&temporary).map_err(io)?;
        let bytes =
            serde_json::to_vec_pretty(self).expect("a checkpoint serializes; this is a bug");
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&temporary, path).map_err(io)?;
        // The rename itself is durable once the directory is synced (Unix only; elsewhere
        // directories cannot be opened this way and the rename is all there is).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir) = File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Checks that this checkpoint can be resumed with `settings` on its input as it is now.
    pub fn check_resumable(&self, settings: &JobSettings) -> Result<(), CliError> {
        if &self.settings != settings {
            return Err(CliError::Resume(format!(
                "the output was started with other settings ({}); pass --restart to start \
                 over or choose another output",
                differences(&self.settings, settings)
            )));
        }
        if let Some(last) = &self.last_line {
            let bytes = input::line_at(&settings.input, last.start, self.input_offset)?;
            if input::line_digest(&bytes) != last.digest {
                return Err(CliError::InputChanged(format!(
                    "line {} of {} is not the line embedded last time",
                    self.next_line - 1,
                    settings.input.display()
                )));
            }
        }
        Ok(())
    }
}

/// The progress file of `output`.
pub fn progress_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_os_string();
    name.push(".progress.json");
    PathBuf::from(name)
}

/// Names the settings that differ, old and new.
fn differences(old: &JobSettings, new: &JobSettings) -> String {
    let old = serde_json::to_value(old).expect("settings serialize; this is a bug");
    let new = serde_json::to_value(new).expect("settings serialize; this is a bug");
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return String::new();
    };
    old.iter()
        .filter(|(key, value)| new.get(*key) != Some(value))
        .map(|(key, value)| format!("{key}: {value} then, {} now", new[key]))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(input: PathBuf) -> JobSettings {
        JobSettings {
            input,
            format: Format::Jsonl,
            text_field: "text".into(),
            id_field: None,
            query: false,
            instruction: None,
            dimensions: None,
            model: None,
        }
    }

    #[test]
    fn saved_checkpoints_load_back_and_other_settings_are_named() {
        let dir = std::env::temp_dir().join(format!("embed-jsonl-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("in.jsonl");
        std::fs::write(&input, "{\"text\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
        let path = progress_path(&dir.join("out.npy"));
        assert!(path.ends_with("out.npy.progress.json"));
        assert_eq!(Checkpoint::load(&path).unwrap(), None);

        let mut checkpoint = Checkpoint::fresh(settings(input.clone()));
        let last = Record {
            line: 1,
            id: None,
            text: "a".into(),
            start_offset: 0,
            end_offset: 14,
            digest: input::line_digest(b"{\"text\": \"a\"}"),
        };
        checkpoint.advance(1, Some(32), 100, &last);
        checkpoint.save(&path).unwrap();
        let loaded = Checkpoint::load(&path).unwrap().unwrap();
        assert_eq!(loaded, checkpoint);
        loaded.check_resumable(&settings(input.clone())).unwrap();

        let mut other = settings(input.clone());
        other.dimensions = Some(16);
        let error = loaded.check_resumable(&other).unwrap_err().to_string();
        assert!(error.contains("dimensions: null then, 16 now"), "{error}");

        std::fs::write(&input, "{\"text\": \"z\"}\n{\"text\": \"b\"}\n").unwrap();
        assert!(matches!(
            loaded.check_resumable(&settings(input)),
            Err(CliError::InputChanged(_))
        ));
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(Checkpoint::load(&path), Err(CliError::Resume(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
