//! Checkpoint loading: the layouts that must load (sharded, `model.` prefix, `lm_head`,
//! f16/f32 storage, transformers 4.x config) and the ones that must fail with a clear error.

mod fixture;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gpu_worker::cpu::CpuBackend;
use gpu_worker::model::weights::Weights;
use gpu_worker::model::{self, ModelError};
use gpu_worker::ops::BatchLayout;
use gpu_worker::ops::Dtype;
use half::{bf16, f16};
use safetensors::tensor::TensorView;

/// A scratch model directory, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("qwen3-loading-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tensor to write: dtype, shape, raw bytes.
type Tensor = (safetensors::Dtype, Vec<usize>, Vec<u8>);

/// The fixture's tensors as (name -> tensor), in their stored bf16.
fn fixture_tensors() -> HashMap<String, Tensor> {
    let weights = Weights::open(&fixture::tiny_dir()).unwrap();
    let names: Vec<String> = weights.names().into_iter().map(String::from).collect();
    names
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(fixture::tiny_dir().join("model.safetensors")).unwrap();
            let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let view = file.tensor(&name).unwrap();
            (
                name,
                (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
            )
        })
        .collect()
}

fn convert(tensor: &Tensor, to: safetensors::Dtype) -> Tensor {
    let values: Vec<f32> = tensor
        .2
        .chunks_exact(2)
        .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    let bytes = match to {
        safetensors::Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        safetensors::Dtype::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        other => panic!("no conversion to {other:?}"),
    };
    (to, tensor.1.clone(), bytes)
}

fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, (dtype, shape, data))| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn copy_side_files(dir: &Path) {
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture::tiny_dir().join(file), dir.join(file)).unwrap();
    }
}

/// Embeds the `en_short` golden case and returns the max abs diff to the golden vector.
fn diff_to_golden(dir: &Path) -> f32 {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture::tiny_dir().join("golden.json")).unwrap(),
    )
    .unwrap();
    let case = &golden["cases"][0];
    let ids: Vec<u32> = case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want: Vec<f32> = case["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let model = model::load(dir, &CpuBackend::F32).unwrap();
    let layout = BatchLayout::from_lengths(&[ids.len()]).unwrap();
    let got = model
        .embed(&CpuBackend::F32, &ids, &layout, &[want.len()])
        .unwrap();
    got[0]
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn sharded_prefixed_checkpoint_with_lm_head_and_v4_config_loads() {
    let scratch = ScratchDir::new("sharded");
    let dir = &scratch.0;
    copy_side_files(dir);
    // transformers 4.x config layout.
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let theta = config["rope_parameters"]["rope_theta"].clone();
    let map = config.as_object_mut().unwrap();
    map.remove("rope_parameters");
    map.remove("dtype");
    map.insert("rope_theta".into(), theta);
    map.insert("rope_scaling".into(), serde_json::Value::Null);
    map.insert("torch_dtype".into(), "bfloat16".into());
    map.insert(
        "architectures".into(),
        serde_json::json!(["Qwen3ForCausalLM"]),
    );
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    let mut tensors = fixture_tensors();
    let lm_head = tensors["embed_tokens.weight"].clone();
    let (mut first, mut second) = (HashMap::new(), HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (name, tensor) in tensors.drain() {
        let prefixed = format!("model.{name}");
        let shard = if name.starts_with("layers.0.") {
            &mut first
        } else {
            &mut second
        };
        let file = if name.starts_with("layers.0.") {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        weight_map.insert(prefixed.clone(), file.into());
        shard.insert(prefixed, tensor);
    }
    second.insert("lm_head.weight".into(), lm_head);
    weight_map.insert(
        "lm_head.weight".into(),
        "model-00002-of-00002.safetensors".into(),
    );
    write_safetensors(&dir.join("model-00001-of-00002.safetensors"), &first);
    write_safetensors(&dir.join("model-00002-of-00002.safetensors"), &second);
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let diff = diff_to_golden(dir);
    assert!(diff < 2e-5, "diff {diff}");
}

#[test]
fn f32_and_f16_storage_load() {
    for (dtype, tolerance) in [
        (safetensors::Dtype::F32, 2e-5),
        (safetensors::Dtype::F16, 5e-3),
    ] {
        let scratch = ScratchDir::new(&format!("{dtype:?}"));
        copy_side_files(&scratch.0);
        let tensors: HashMap<String, Tensor> = fixture_tensors()
            .into_iter()
            .map(|(n, t)| (n, convert(&t, dtype)))
            .collect();
        write_safetensors(&scratch.0.join("model.safetensors"), &tensors);
        let weights = Weights::open(&scratch.0).unwrap();
        let view = weights.get("norm.weight", &[32]).unwrap();
        assert_eq!(
            view.dtype,
            if dtype == safetensors::Dtype::F32 {
                Dtype::F32
            } else {
                Dtype::F16
            }
        );
        let diff = diff_to_golden(&scratch.0);
        assert!(diff < tolerance, "{dtype:?}: diff {diff}");
    }
}

/// Writes the fixture with `edit` applied to its tensors and returns the load error.
fn load_error(name: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> String {
    let scratch = ScratchDir::new(name);
    copy_side_files(&scratch.0);
    let mut tensors = fixture_tensors();
    edit(&mut tensors);
    write_safetensors(&scratch.0.join("model.safetensors"), &tensors);
    match model::load(&scratch.0, &CpuBackend::F32) {
        Ok(_) => panic!("{name}: the broken checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_checkpoints_fail_with_errors_that_name_the_problem() {
    let missing = load_error("missing", |t| {
        t.remove("layers.1.mlp.up_proj.weight");
    });
    assert!(missing.contains("layers.1.mlp.up_proj.weight"), "{missing}");

    let wrong_shape = load_error("shape", |t| {
        let (dtype, _, data) = t.remove("layers.0.self_attn.k_proj.weight").unwrap();
        t.insert(
            "layers.0.self_attn.k_proj.weight".into(),
            (dtype, vec![16, 64], data),
        );
    });
    assert!(
        wrong_shape.contains("layers.0.self_attn.k_proj.weight")
            && wrong_shape.contains("[16, 64]"),
        "{wrong_shape}"
    );

    let bad_dtype = load_error("dtype", |t| {
        let (_, shape, data) = t.remove("norm.weight").unwrap();
        t.insert("norm.weight".into(), (safetensors::Dtype::I16, shape, data));
    });
    assert!(
        bad_dtype.contains("norm.weight") && bad_dtype.contains("I16"),
        "{bad_dtype}"
    );

    let bias = load_error("bias", |t| {
        t.insert(
            "layers.0.self_attn.q_proj.bias".into(),
            (safetensors::Dtype::BF16, vec![64], vec![0; 128]),
        );
    });
    assert!(bias.contains("q_proj.bias"), "{bias}");
}

#[test]
fn truncated_file_and_foreign_config_fail_cleanly() {
    let scratch = ScratchDir::new("truncated");
    copy_side_files(&scratch.0);
    let bytes = std::fs::read(fixture::tiny_dir().join("model.safetensors")).unwrap();
    std::fs::write(
        scratch.0.join("model.safetensors"),
        &bytes[..bytes.len() - 1000],
    )
    .unwrap();
    let error = model::load(&scratch.0, &CpuBackend::F32)
        .err()
        .expect("truncated file refused");
    assert!(matches!(error, ModelError::Safetensors { .. }), "{error}");
    assert!(error.to_string().contains("model.safetensors"), "{error}");

    let foreign = ScratchDir::new("foreign");
    copy_side_files(&foreign.0);
    std::fs::copy(
        fixture::tiny_dir().join("model.safetensors"),
        foreign.0.join("model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(foreign.0.join("config.json")).unwrap())
            .unwrap();
    config["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    config["model_type"] = "llama".into();
    std::fs::write(foreign.0.join("config.json"), config.to_string()).unwrap();
    let error = model::load(&foreign.0, &CpuBackend::F32)
        .err()
        .expect("foreign architecture refused");
    assert!(error.to_string().contains("LlamaForCausalLM"), "{error}");

    let empty = ScratchDir::new("empty");
    copy_side_files(&empty.0);
    let error = model::load(&empty.0, &CpuBackend::F32)
        .err()
        .expect("no weights refused");
    assert!(error.to_string().contains("model.safetensors"), "{error}");
}
