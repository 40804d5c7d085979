//! A GPU worker whose device fails, made to by the test-only fault hook in the real binary:
//! a pass that panics, aborts the process or hangs; a poison input that fails every worker
//! it reaches; a batch that ran out of deliveries.

use super::*;

/// The token id of " fox" in the qwen3-tiny tokenizer: of the golden cases only `en_short`
/// holds it, so the load's requests that embed that case set off the fault hook.
const FAULT_TOKEN: &str = "38835";

/// What became of a GPU worker whose device failed under load.
struct DeviceFault {
    /// How it exited.
    status: std::process::ExitStatus,
    /// The reason it gave on the status subject before it left, if one was seen.
    unhealthy: Option<String>,
    /// Its log.
    log: String,
}

/// Runs the load through two GPU workers, the first with the fault hook set to `fault` on
/// [`FAULT_TOKEN`]; waits (watching the status subject) for that worker to exit, runs the
/// load 3 s more, and checks that every request was answered correctly (by the other
/// worker, for those the faulty one held) and that the other worker lives on.
async fn device_fault_under_load(fault: &str) -> DeviceFault {
    let server = NatsServer::start();
    let mut env = FAULT_ENV.to_vec();
    env.push(("QWEN3_EMBED__GPU__WATCHDOG_MIN_S", "2"));
    let hook = [
        ("QWEN3_EMBED__GPU__FAULT", fault),
        ("QWEN3_EMBED__GPU__FAULT_TOKEN_ID", FAULT_TOKEN),
    ];
    let mut stack = Stack::start_with(&server.url(), &env, &hook).await;
    let load = Load::start(&stack.base, CLIENTS, embedding_templates());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut unhealthy = None;
    let status = loop {
        if let Some(status) = stack.gpus[0].wait_exit(Duration::ZERO) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the GPU worker with the {fault} fault did not leave within 30 s"
        );
        // Each gather takes 200 ms.
        for status in worker_statuses(&stack.nats).await {
            if let Some(reason) = status.unhealthy {
                assert!(!status.loaded, "an unhealthy worker reports loaded");
                unhealthy = Some(reason);
            }
        }
    };
    load_for(Duration::from_secs(3)).await;
    let records = load.stop().await;
    assert!(!status.success(), "the faulty worker exited with {status}");
    assert_flawless(&records, &format!("a GPU worker's pass set to {fault}"));
    assert!(stack.gpus[1].is_running(), "the healthy GPU worker died");
    assert!(stack.gateway.is_running(), "the gateway died");
    assert_eq!(stack.debug().await["pending_upstream"], 0);
    let statuses = worker_statuses(&stack.nats).await;
    assert!(
        statuses.iter().all(|s| s.unhealthy.is_none()),
        "a worker still reports unhealthy after the faulty one left: {statuses:?}"
    );
    DeviceFault {
        status,
        unhealthy,
        log: stack.gpus[0].log(),
    }
}

/// Asserts a worker that left unhealthy said why, once, and exited with code 1.
fn assert_left_unhealthy(fault: &DeviceFault, why: &str) {
    assert_eq!(fault.status.code(), Some(1), "{}", fault.log);
    let lines = fault.log.matches("gpu worker unhealthy").count();
    assert_eq!(lines, 1, "one error line says why: {}", fault.log);
    assert!(fault.log.contains(why), "{}", fault.log);
    let seen = fault.unhealthy.as_deref().unwrap_or_default();
    assert!(
        seen.contains(why),
        "the status subject did not show it unhealthy ({why}) before it left: {:?}",
        fault.unhealthy
    );
}

#[test]
fn a_gpu_worker_whose_pass_panics_leaves_and_loses_no_request() {
    serial(async {
        let fault = device_fault_under_load("panic").await;
        assert_left_unhealthy(&fault, "panicked");
    });
}

#[test]
fn a_gpu_worker_whose_pass_hangs_is_found_out_and_loses_no_request() {
    serial(async {
        let fault = device_fault_under_load("hang").await;
        assert_left_unhealthy(&fault, "watchdog");
    });
}

#[test]
fn a_gpu_worker_that_aborts_mid_pass_loses_no_request() {
    serial(async {
        use std::os::unix::process::ExitStatusExt;
        let fault = device_fault_under_load("abort").await;
        assert_eq!(fault.status.signal(), Some(6), "SIGABRT: {}", fault.log);
        assert!(fault.log.contains("fault hook struck"), "{}", fault.log);
    });
}

/// The token id of " volcano" in the qwen3-tiny tokenizer: no golden case holds it.
const POISON_TOKEN: &str = "65206";

/// Restarts the GPU workers of `stack` that exited, as a supervisor would; counts them.
fn restart_exited(stack: &mut Stack, pipeline: &Pipeline, exits: &mut usize) {
    for (k, gpu) in stack.gpus.iter_mut().enumerate() {
        if let Some(status) = gpu.wait_exit(Duration::ZERO) {
            assert!(!status.success(), "{} exited with {status}", gpu.name());
            *exits += 1;
            // Shown when the test fails: what each exited worker took and gave up.
            let log = gpu.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
                .collect();
            eprintln!("---- {} exited ----\n{}", gpu.name(), lines.join("\n"));
            *gpu = pipeline.gpu(&format!("gpu-{}-restart-{exits}", k + 1));
        }
    }
}

/// Sends a request with a poison input among load through two GPU workers that all `fault`
/// (`panic`, `hang`) on it, with `extra_env` set, restarting those that exit: only the
/// poison request fails, with `internal` naming its inputs, every other request is answered
/// correctly, and at most two workers leave.
async fn poison_input_under_load(fault: &str, extra_env: &[(&'static str, &'static str)]) {
    let server = NatsServer::start();
    // Every GPU worker fails on the poison token (a real poison input would fail each the
    // same way) and is restarted when it exits.
    let max_deliver = 3;
    let mut env = FAULT_ENV.to_vec();
    env.extend([
        ("QWEN3_EMBED__QUEUE__MAX_DELIVER", "3"),
        ("QWEN3_EMBED__GPU__WATCHDOG_MIN_S", "2"),
        ("QWEN3_EMBED__GPU__FAULT", fault),
        ("QWEN3_EMBED__GPU__FAULT_TOKEN_ID", POISON_TOKEN),
    ]);
    env.extend_from_slice(extra_env);
    let mut stack = Stack::start(&server.url(), &env).await;
    let pipeline = Pipeline::new(server.url(), &env);
    let load = Load::start(&stack.base, CLIENTS, embedding_templates());
    load_for(Duration::from_secs(1)).await;

    // The poison input between two innocent ones, in one request over NATS.
    let golden = golden();
    let text = |id: &str| {
        golden["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .find(|case| case["id"] == id)
            .and_then(|case| case["text"].as_str())
            .expect("a golden case")
            .to_string()
    };
    let request = EmbedRequest {
        id: "poison".into(),
        input: vec![
            text("en_short"),
            "A volcano erupted.".into(),
            text("doc_passage"),
        ],
        input_type: InputType::Document,
        ..Default::default()
    };
    let mut replies = publish_for_replies(&stack.nats, "embed.requests", &request, None).await;
    let mut exits = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    let error: ErrorReply = loop {
        restart_exited(&mut stack, &pipeline, &mut exits);
        assert!(
            Instant::now() < deadline,
            "no error for the poison request within 40 s ({exits} GPU worker exits)"
        );
        let Ok(message) = tokio::time::timeout(Duration::from_millis(100), replies.next()).await
        else {
            continue;
        };
        let message = message.expect("subscription open");
        if let EmbedReply::Error(error) =
            wire::decode::<EmbedReply>(&message.payload).expect("a reply")
        {
            break error;
        }
    };
    // The load carries on while the workers settle.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        restart_exited(&mut stack, &pipeline, &mut exits);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = load.stop().await;

    eprintln!(
        "poison: {exits} GPU worker exits, {} requests of the load; the poison request: \
         {error:?}",
        records.len()
    );
    assert_eq!(error.error.code, ErrorCode::Internal, "{error:?}");
    assert_eq!(error.id.as_deref(), Some("poison"));
    assert!(
        error.error.message.contains("inputs") && error.error.message.contains('1'),
        "the error names the poison input: {error:?}"
    );
    assert_flawless(&records, "a poison input among the load");
    // Failing workers hand their passes back marked: the poison batch is given up after
    // failing two devices, whatever max_deliver allows.
    assert!(
        (1..=2).contains(&exits),
        "{exits} GPU worker exits; a poison input ({fault}) fails at most two workers \
         (max_deliver {max_deliver} is the bound only for workers that die at once)"
    );
}

#[test]
fn a_poison_input_that_panics_fails_only_its_request_and_at_most_two_workers() {
    serial(poison_input_under_load("panic", &[]));
}

/// The GPU workers take every direct offer (however long their queue), so the poison batch
/// reaches one directly, and its hung pass outlasts the tokenizer worker's wait for the
/// offer (500 ms): the batch is queued twice, by the tokenizer worker at once and by the
/// hung worker when its watchdog fires. Both copies count one failed device and share a
/// message id, so the stream keeps one (with two unmarked copies, four workers left).
#[test]
fn a_poison_input_that_hangs_fails_only_its_request_and_at_most_two_workers() {
    serial(poison_input_under_load(
        "hang",
        &[("QWEN3_EMBED__GPU__DIRECT_MAX_WAIT_MS", "60000")],
    ));
}

#[test]
fn a_batch_out_of_deliveries_is_answered_and_deleted() {
    serial(async {
        use async_nats::jetstream::{AckKind, consumer::PullConsumer};
        let server = NatsServer::start();
        let mut env = FAULT_ENV.to_vec();
        env.push(("QWEN3_EMBED__QUEUE__MAX_DELIVER", "2"));
        let gpu = Pipeline::new(server.url(), &env).gpu("gpu-1");
        let nats = async_nats::connect(server.url()).await.expect("connect");
        wait_for_worker_counts(&nats, 0, 1).await;
        // Frozen, the worker takes no batch, but JetStream's advisory waits in its socket;
        // its last pull request expires within a second.
        signal(gpu.pid(), "STOP");
        tokio::time::sleep(Duration::from_millis(1500)).await;

        // A batch whose deliveries all fail (taken here and NAKed, as by workers that died
        // holding it) never reaches a worker on its last delivery.
        let inbox = nats.new_inbox();
        let mut replies = nats.subscribe(inbox.clone()).await.expect("subscribe");
        let item = |index| BatchItem::new("exhausted", &inbox, index, 2, 2);
        let batch = TokenBatch {
            token_ids: vec![1, 2, 3, 4],
            items: vec![item(1), item(0)],
        };
        let js = async_nats::jetstream::new(nats.clone());
        js.publish(
            "embed.batches",
            wire::encode(&batch).expect("encode").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("queued");
        let mut stream = js.get_stream("EMBED_BATCHES").await.expect("stream");
        let consumer: PullConsumer = stream.get_consumer("gpu-workers").await.expect("consumer");
        let mut deliveries = 0;
        // One pull more than `max_deliver`: the last finds nothing (and makes the server
        // announce the batch out of deliveries).
        for _ in 0..3 {
            let mut fetched = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .expect("fetch");
            while let Some(message) = fetched.next().await {
                let message = message.expect("a delivery");
                deliveries += 1;
                message.ack_with(AckKind::Nak(None)).await.expect("NAK");
            }
        }
        assert_eq!(deliveries, 2, "delivered max_deliver times, no more");
        signal(gpu.pid(), "CONT");

        let message = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("an answer within 10 s of the worker's return")
            .expect("subscription open");
        let EmbedReply::Error(error) = wire::decode::<EmbedReply>(&message.payload).expect("reply")
        else {
            panic!("expected an error reply");
        };
        assert_eq!(error.id.as_deref(), Some("exhausted"));
        assert_eq!(error.error.code, ErrorCode::Internal);
        assert!(
            error.error.message.contains("inputs 0, 1")
                && error.error.message.contains("2 deliveries"),
            "{error:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while stream.info().await.expect("stream info").state.messages > 0 {
            assert!(Instant::now() < deadline, "the batch was not deleted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let late = tokio::time::timeout(Duration::from_millis(300), replies.next()).await;
        assert!(late.is_err(), "answered twice: {late:?}");
    });
}
