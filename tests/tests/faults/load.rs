//! The embedding load's requests, every one checked against the qwen3-tiny golden vectors:
//! seed-route documents (one and several per request), queries with their instruction,
//! OpenAI-route batches and Matryoshka sizes.

use e2e_tests::load::{Expected, Template};
use serde_json::{Value, json};

use crate::support::{floats, golden};

/// The mixed requests, built from the golden file.
pub fn embedding_templates() -> Vec<Template> {
    let golden = golden();
    let cases = golden["cases"].as_array().expect("cases");
    let documents: Vec<&Value> = cases.iter().filter(|c| c["is_query"] == false).collect();
    let queries: Vec<&Value> = cases.iter().filter(|c| c["is_query"] == true).collect();
    let mut templates = Vec::new();
    for case in &documents {
        templates.push(Template {
            body: json!({"input": [case["text"]], "is_query": false}),
            expected: Expected::SeedVectors(vec![floats(&case["embedding"])]),
            name: format!("seed document {}", case["id"]),
        });
    }
    for group in documents.chunks(3) {
        templates.push(Template {
            body: json!({"input": group.iter().map(|c| c["text"].clone()).collect::<Vec<_>>(), "is_query": false}),
            expected: Expected::SeedVectors(group.iter().map(|c| floats(&c["embedding"])).collect()),
            name: format!("seed documents x{}", group.len()),
        });
    }
    for case in &queries {
        templates.push(Template {
            body: json!({"input": [case["text"]], "is_query": true, "instruction": case["instruction"]}),
            expected: Expected::SeedVectors(vec![floats(&case["embedding"])]),
            name: format!("seed query {}", case["id"]),
        });
    }
    templates.push(Template {
        body: json!({"model": "qwen3-tiny", "input": documents.iter().map(|c| c["text"].clone()).collect::<Vec<_>>()}),
        expected: Expected::OpenAiVectors(documents.iter().map(|c| floats(&c["embedding"])).collect()),
        name: "openai all documents".into(),
    });
    for mrl in golden["mrl"].as_array().expect("mrl") {
        let case = cases
            .iter()
            .find(|c| c["id"] == mrl["id"])
            .expect("an mrl entry names a case");
        let mut body = json!({"input": case["text"], "dimensions": mrl["dim"]});
        if case["is_query"] == true {
            body["input_type"] = "query".into();
            body["instruction"] = case["instruction"].clone();
        }
        templates.push(Template {
            body,
            expected: Expected::OpenAiVectors(vec![floats(&mrl["embedding"])]),
            name: format!("openai {} dims {}", mrl["id"], mrl["dim"]),
        });
    }
    templates
}
