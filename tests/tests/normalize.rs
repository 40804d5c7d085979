//! `normalize: false` end to end over the public NATS API (real nats-server, tokenizer worker
//! and CPU GPU worker): the vector comes back as pooled, the final norm's output at the last
//! token (golden.json's layer trace), cut but not rescaled by `dimensions`, while requests
//! in the same batches that did not ask keep their L2-normalized vectors.

mod support;

use common::wire::{EmbedRequest, InputType};
use e2e_tests::{NatsServer, tiny_model_dir};
use serde_json::Value;
use support::{embed_over_nats, floats, golden, max_abs_diff, start_gpu, start_tokenizer};

/// A document request for `text`.
fn request(id: &str, text: &str, dimensions: Option<u32>, normalize: Option<bool>) -> EmbedRequest {
    EmbedRequest {
        id: id.into(),
        input: vec![text.into()],
        input_type: InputType::Document,
        dimensions,
        normalize,
        ..Default::default()
    }
}

fn length(vector: &[f32]) -> f32 {
    vector.iter().map(|v| v * v).sum::<f32>().sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnormalized_vectors_are_the_pooled_hidden_state() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let tokenizer = start_tokenizer(&server, &model);
    let gpu = start_gpu(&server, &model);
    let client = async_nats::connect(server.url()).await.unwrap();
    support::wait_for_workers(&client).await;
    let golden = golden();
    let trace = &golden["trace"];
    let text = trace["text"].as_str().unwrap();
    let rows = trace["after_final_norm"].as_array().unwrap();
    let pooled = floats(rows.last().unwrap());

    // Whole, and cut to 16 (Matryoshka: the first 16 values, not rescaled).
    let (vectors, tokens) = embed_over_nats(&client, &request("raw", text, None, Some(false)))
        .await
        .unwrap();
    assert_eq!(
        tokens[0] as usize,
        trace["input_ids"].as_array().unwrap().len()
    );
    let diff = max_abs_diff(&vectors[0], &pooled);
    assert!(diff < 2e-5, "raw: diff {diff}");
    let (cut, _) = embed_over_nats(&client, &request("cut", text, Some(16), Some(false)))
        .await
        .unwrap();
    let diff = max_abs_diff(&cut[0], &pooled[..16]);
    assert!(diff < 2e-5, "cut: diff {diff}");
    // `normalize: true` and no field at all are the unit vector of the golden trace.
    for normalize in [Some(true), None] {
        let (unit, _) = embed_over_nats(&client, &request("unit", text, None, normalize))
            .await
            .unwrap();
        let diff = max_abs_diff(&unit[0], &floats(&trace["embedding"]));
        assert!(diff < 2e-5, "normalize {normalize:?}: diff {diff}");
    }

    // Concurrent requests, raw and normalized, batched together: each gets its own kind.
    let cases: Vec<Value> = golden["cases"].as_array().unwrap().clone();
    let documents: Vec<&Value> = cases.iter().filter(|c| c["is_query"] == false).collect();
    let sends = documents.iter().enumerate().flat_map(|(i, case)| {
        let text = case["text"].as_str().unwrap();
        [false, true].map(|normalize| {
            let client = client.clone();
            let request = request(
                &format!("mixed-{i}-{normalize}"),
                text,
                None,
                Some(normalize),
            );
            async move {
                (
                    normalize,
                    embed_over_nats(&client, &request).await.unwrap().0,
                )
            }
        })
    });
    let answers = futures::future::join_all(sends).await;
    for (k, (normalize, vectors)) in answers.iter().enumerate() {
        let case = documents[k / 2];
        let unit = floats(&case["embedding"]);
        let scale = if *normalize {
            1.0
        } else {
            case["norm_before_normalize"].as_f64().unwrap() as f32
        };
        let want: Vec<f32> = unit.iter().map(|v| v * scale).collect();
        let diff = max_abs_diff(&vectors[0], &want) / scale;
        assert!(
            diff < 2e-5,
            "case {} normalize {normalize}: diff {diff}",
            case["id"]
        );
        if !normalize {
            assert!((length(&vectors[0]) - scale).abs() < 1e-3 * scale);
        }
    }
    tokenizer.stop().await.unwrap();
    gpu.stop().await.unwrap();
}
