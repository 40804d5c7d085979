//! Safetensors checkpoints, memory-mapped: one `model.safetensors` or the shards listed in
//! `model.safetensors.index.json`. Tensors are looked up by their bare name
//! (`layers.0.mlp.up_proj.weight`) whether the checkpoint stores them with a `model.` prefix
//! or not.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;

use super::ModelError;
use crate::ops::{Dtype, TensorView};

/// Where a tensor lives: which file, and its place in it.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// All tensors of a checkpoint, memory-mapped and indexed by bare name.
#[derive(Debug)]
pub struct Weights {
    maps: Vec<Mmap>,
    entries: HashMap<String, Entry>,
}

/// Prefix written by `Qwen3ForCausalLM` checkpoints, stripped at load.
const MODEL_PREFIX: &str = "model.";

impl Weights {
    /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`,
    /// in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if single.exists() {
            vec![single]
        } else if index.exists() {
            shard_files(&index)?
        } else {
            return Err(ModelError::MissingFile(format!(
                "{} holds neither model.safetensors nor model.safetensors.index.json",
                dir.display()
            )));
        };
        Self::from_files(&files)
    }

    /// Maps the given safetensors files and indexes their tensors.
    pub fn from_files(files: &[PathBuf]) -> Result<Self, ModelError> {
        let mut maps = Vec::with_capacity(files.len());
        let mut entries = HashMap::new();
        for (file_index, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the file is opened read-only and mapped privately; the loader treats
            // checkpoint files as immutable while the model is loaded (as every safetensors
            // reader does). A file truncated under us would fault, not corrupt memory.
            let map = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&map).map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            let data_start = 8 + header_len;
            for (raw_name, info) in metadata.tensors() {
                let name = raw_name
                    .strip_prefix(MODEL_PREFIX)
                    .unwrap_or(&raw_name)
                    .to_string();
                let dtype = match info.dtype {
                    safetensors::Dtype::BF16 => Dtype::Bf16,
                    safetensors::Dtype::F16 => Dtype::F16,
                    safetensors::Dtype::F32 => Dtype::F32,
                    other => {
                        return Err(ModelError::Unsupported(format!(
                            "tensor `{raw_name}` in {} has dtype {other:?} (only BF16, F16, F32)",
                            path.display()
                        )));
                    }
                };
                let (start, end) = info.data_offsets;
                let entry = Entry {
                    file: file_index,
                    dtype,
                    shape: info.shape.clone(),
                    start: data_start + start,
                    end: data_start + end,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(ModelError::Safetensors {
                        path: path.clone(),
                        detail: format!("tensor `{name}` is stored twice"),
                    });
                }
            }
            maps.push(map);
        }
        Ok(Self { maps, entries })
    }

    /// Whether a tensor exists (bare name).
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Names of all tensors (bare names), sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The tensor `name` (bare name), checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<TensorView<'_>, ModelError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        if entry.shape != shape {
            return Err(ModelError::Shape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
        }
        Ok(TensorView {
            name: name.to_string(),
            dtype: entry.dtype,
            shape: entry.shape.clone(),
            data: &self.maps[entry.file][entry.start..entry.end],
        })
    }
}

/// Distinct shard files of a sharded checkpoint, in first-mention order.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|source| ModelError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| ModelError::Safetensors {
        path: index.to_path_buf(),
        detail: format!("invalid index: {e}"),
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<&String> = parsed.weight_map.values().collect();
    files.sort();
    files.dedup();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}
