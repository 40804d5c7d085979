//! The compact encodings of `gateway::quantize` against an independent reference written in
//! Python (numpy, from `.venv`, installed by deploy/local/setup.sh) on every vector of the
//! tiny model's golden.json, byte for byte; and int8 keeps the top-1 cosine match of every
//! golden query among the golden documents.

use std::process::Command;

use e2e_tests::{repo_root, tiny_model_dir};
use gateway::quantize;
use serde_json::Value;

/// The reference: the scheme of docs/api.md, written from the documentation (f32 products as
/// the gateway computes them, rounding half away from zero, `numpy.packbits`).
const REFERENCE: &str = r#"
import json, sys
import numpy as np
golden = json.load(open(sys.argv[1]))
out = []
for case in golden["cases"]:
    v = np.array(case["embedding"], dtype=np.float32)
    scale = np.float32(127) * np.sqrt(np.float32(len(v))) / np.float32(4)
    y = (v * scale).astype(np.float64)
    int8 = np.clip(np.sign(y) * np.floor(np.abs(y) + 0.5), -127, 127).astype(np.int64)
    ubinary = np.packbits((v > 0).astype(np.uint8)).astype(np.int64)
    out.append({
        "int8": int8.tolist(),
        "uint8": (int8 + 128).tolist(),
        "ubinary": ubinary.tolist(),
        "binary": (ubinary - 128).tolist(),
    })
print(json.dumps(out))
"#;

fn golden() -> Value {
    let path = tiny_model_dir().join("golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden.json")).unwrap()
}

fn vector(case: &Value) -> Vec<f32> {
    case["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn numbers(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn encodings_match_the_python_reference_byte_for_byte() {
    let output = Command::new(repo_root().join(".venv/bin/python"))
        .args(["-c", REFERENCE])
        .arg(tiny_model_dir().join("golden.json"))
        .output()
        .expect("run .venv/bin/python (deploy/local/setup.sh installs numpy)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reference: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let golden = golden();
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(reference.len(), cases.len());
    for (case, want) in cases.iter().zip(&reference) {
        let v = vector(case);
        let id = &case["id"];
        assert_eq!(
            quantize::int8(&v)
                .into_iter()
                .map(i64::from)
                .collect::<Vec<_>>(),
            numbers(&want["int8"]),
            "{id} int8"
        );
        assert_eq!(
            quantize::uint8(&v)
                .into_iter()
                .map(i64::from)
                .collect::<Vec<_>>(),
            numbers(&want["uint8"]),
            "{id} uint8"
        );
        assert_eq!(
            quantize::binary(&v)
                .into_iter()
                .map(i64::from)
                .collect::<Vec<_>>(),
            numbers(&want["binary"]),
            "{id} binary"
        );
        assert_eq!(
            quantize::ubinary(&v)
                .into_iter()
                .map(i64::from)
                .collect::<Vec<_>>(),
            numbers(&want["ubinary"]),
            "{id} ubinary"
        );
    }
}

fn dot<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x.into() * y.into()).sum()
}

fn best(query: &[f64], documents: &[Vec<f64>]) -> usize {
    let cosine = |d: &Vec<f64>| dot(query, d) / (dot(d, d).sqrt() * dot(query, query).sqrt());
    (0..documents.len())
        .max_by(|&a, &b| cosine(&documents[a]).total_cmp(&cosine(&documents[b])))
        .unwrap()
}

#[test]
fn int8_keeps_the_top_match_of_every_query() {
    let golden = golden();
    let cases = golden["cases"].as_array().unwrap();
    let (queries, documents): (Vec<&Value>, Vec<&Value>) =
        cases.iter().partition(|c| c["is_query"] == true);
    assert!(!queries.is_empty() && documents.len() > 5);
    let floats = |c: &&Value| vector(c).into_iter().map(f64::from).collect::<Vec<_>>();
    let int8 = |c: &&Value| {
        quantize::int8(&vector(c))
            .into_iter()
            .map(f64::from)
            .collect::<Vec<_>>()
    };
    let float_documents: Vec<Vec<f64>> = documents.iter().map(floats).collect();
    let int8_documents: Vec<Vec<f64>> = documents.iter().map(int8).collect();
    for query in &queries {
        assert_eq!(
            best(&int8(query), &int8_documents),
            best(&floats(query), &float_documents),
            "{}",
            query["id"]
        );
    }
}
