//! `config.json` of a Qwen3 checkpoint, as written by transformers 4.x or 5.x, checked once.

use std::path::Path;

use serde::Deserialize;

use super::ModelError;

/// The Qwen3 hyper-parameters the forward pass needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3Config {
    /// Tokens in the vocabulary (rows of `embed_tokens`).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head (need not be `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Rotary embedding base.
    pub rope_theta: f32,
    /// Longest sequence the model accepts.
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the embedding table (rerankers).
    pub tie_word_embeddings: bool,
    /// Stored weight dtype named by the config (`bfloat16`, `float16`, `float32`).
    pub dtype: Option<String>,
}

/// `config.json` fields as found on disk; both transformers layouts are accepted.
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    /// transformers 4.x: top-level `rope_theta`.
    #[serde(default)]
    rope_theta: Option<f64>,
    /// transformers 5.x: `rope_parameters: {rope_theta, rope_type}`.
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
    /// transformers 4.x: `rope_scaling` (must be null or default).
    #[serde(default)]
    rope_scaling: Option<RopeParameters>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    torch_dtype: Option<String>,
    #[serde(default)]
    dtype: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_type: Option<String>,
    #[serde(rename = "type", default)]
    legacy_type: Option<String>,
}

fn default_max_positions() -> usize {
    32768
}

impl Qwen3Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            ModelError::Config(message) => {
                ModelError::Config(format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("not a Qwen3 config.json: {e}")))?;
        raw.validate()
    }

    /// Elements of one fused q|k|v row.
    pub fn qkv_width(&self) -> usize {
        (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim
    }
}

fn unsupported(field: &str, detail: impl std::fmt::Display) -> ModelError {
    ModelError::Unsupported(format!("config field `{field}`: {detail}"))
}

impl RawConfig {
    fn validate(self) -> Result<Qwen3Config, ModelError> {
        const ARCHITECTURES: [&str; 2] = ["Qwen3Model", "Qwen3ForCausalLM"];
        if let Some(archs) = &self.architectures
            && let Some(other) = archs.iter().find(|a| !ARCHITECTURES.contains(&a.as_str()))
        {
            return Err(unsupported(
                "architectures",
                format!("{other} is not supported (expected one of {ARCHITECTURES:?})"),
            ));
        }
        if let Some(model_type) = &self.model_type
            && model_type != "qwen3"
        {
            return Err(unsupported(
                "model_type",
                format!("{model_type:?} is not supported (expected \"qwen3\")"),
            ));
        }
        if self.attention_bias {
            return Err(unsupported(
                "attention_bias",
                "biases in attention are not supported",
            ));
        }
        if self.use_sliding_window {
            return Err(unsupported(
                "use_sliding_window",
                "sliding-window attention is not supported",
            ));
        }
        if let Some(kind) = self
            .layer_types
            .iter()
            .flatten()
            .find(|kind| kind.as_str() != "full_attention")
        {
            return Err(unsupported(
                "layer_types",
                format!("{kind:?} layers are not supported"),
            ));
        }
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return Err(unsupported(
                "hidden_act",
                format!("{act:?} (only \"silu\")"),
            ));
        }
        for (field, params) in [
            ("rope_parameters", &self.rope_parameters),
            ("rope_scaling", &self.rope_scaling),
        ] {
            let kind = params
                .as_ref()
                .and_then(|p| p.rope_type.as_ref().or(p.legacy_type.as_ref()));
            if let Some(kind) = kind
                && kind != "default"
            {
                return Err(unsupported(
                    field,
                    format!("rope type {kind:?} (only \"default\")"),
                ));
            }
        }
        let rope_theta = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .ok_or_else(|| {
                ModelError::Config(
                    "no rope_theta (neither top-level nor in rope_parameters)".into(),
                )
            })?;
        let num_kv = self.num_key_value_heads.unwrap_or(self.num_attention_heads);
        let head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1));
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", num_kv),
            ("head_dim", head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(ModelError::Config(format!("`{field}` must be positive")));
            }
        }
        if !self.num_attention_heads.is_multiple_of(num_kv) {
            return Err(ModelError::Config(format!(
                "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({num_kv})",
                self.num_attention_heads
            )));
        }
        if !head_dim.is_multiple_of(2) {
            return Err(ModelError::Config(format!(
                "`head_dim` ({head_dim}) must be even for the rotary embedding"
            )));
        }
        if !(self.rms_norm_eps > 0.0 && rope_theta > 0.0) {
            return Err(ModelError::Config(
                "`rms_norm_eps` and `rope_theta` must be positive".into(),
            ));
        }
        Ok(Qwen3Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: num_kv,
            head_dim,
            rms_norm_eps: self.rms_norm_eps as f32,
            rope_theta: rope_theta as f32,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            dtype: self.dtype.or(self.torch_dtype),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V5: &str = r#"{
        "architectures": ["Qwen3Model"], "model_type": "qwen3", "vocab_size": 100,
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "rms_norm_eps": 1e-6, "rope_parameters": {"rope_theta": 1000000, "rope_type": "default"},
        "dtype": "bfloat16", "sliding_window": null, "use_sliding_window": false,
        "layer_types": ["full_attention", "full_attention"], "attention_bias": false
    }"#;

    const V4: &str = r#"{
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 100,
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000, "rope_scaling": null,
        "torch_dtype": "bfloat16", "tie_word_embeddings": true, "max_window_layers": 28
    }"#;

    #[test]
    fn both_transformers_layouts_parse_alike() {
        let v5 = Qwen3Config::from_json(V5).unwrap();
        let v4 = Qwen3Config::from_json(V4).unwrap();
        assert_eq!(v5.rope_theta, 1e6);
        assert_eq!(v4.rope_theta, 1e6);
        assert_eq!(v5.dtype.as_deref(), Some("bfloat16"));
        assert_eq!(v4.dtype.as_deref(), Some("bfloat16"));
        assert_eq!(v5.qkv_width(), 128);
        assert!(v4.tie_word_embeddings);
    }

    fn with(field: &str, value: &str) -> String {
        let mut json: serde_json::Value = serde_json::from_str(V5).unwrap();
        json[field] = serde_json::from_str(value).unwrap();
        json.to_string()
    }

    #[test]
    fn unsupported_configurations_name_the_field() {
        for (field, value) in [
            ("architectures", r#"["LlamaForCausalLM"]"#),
            ("model_type", r#""llama""#),
            ("attention_bias", "true"),
            ("use_sliding_window", "true"),
            ("layer_types", r#"["sliding_attention", "full_attention"]"#),
            (
                "rope_parameters",
                r#"{"rope_theta": 10000, "rope_type": "yarn"}"#,
            ),
            ("hidden_act", r#""gelu""#),
        ] {
            let err = Qwen3Config::from_json(&with(field, value))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(field),
                "error for {field} should name it: {err}"
            );
        }
    }

    #[test]
    fn inconsistent_head_counts_are_refused() {
        let err = Qwen3Config::from_json(&with("num_key_value_heads", "3"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
        assert!(Qwen3Config::from_json("{}").is_err());
    }
}
