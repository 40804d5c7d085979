//! The HTTP edge against hostile and slow clients, on loopback with a real nats-server:
//! slow headers, slow bodies, idle connections, the connection cap, HTTPS, and the rule for
//! a public address without API keys.

mod support;

use std::time::Duration;

use common::wire::WorkerKind;
use serde_json::json;
use support::{FAKE_DIMS, Harness, expected_vector, status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// Generous bound for "it was answered" and "it was closed".
const PROMPTLY: Duration = Duration::from_secs(10);

/// A request for the model list, kept alive.
const MODELS_REQUEST: &[u8] = b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n\r\n";

/// An HTTP client that keeps no idle connection (each request its own connection).
fn unpooled() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Answers status queries as one loaded tokenizer and one loaded GPU worker, so `/health`
/// is 200.
async fn healthy_workers(harness: &Harness) -> tokio::task::JoinHandle<()> {
    harness
        .fake_statuses(vec![
            status(WorkerKind::Tokenizer, "t1", true, 0),
            status(WorkerKind::Gpu, "g1", true, 0),
        ])
        .await
}

/// Checks that `/health`, `/v1/models` and an embedding are answered within [`PROMPTLY`].
async fn serves_normally(harness: &Harness) {
    let answered = timeout(PROMPTLY, async {
        let health = harness.get("/health").await;
        assert_eq!(health.status(), 200, "{:?}", health.text().await);
        let models = harness.get("/v1/models").await;
        assert_eq!(models.status(), 200);
        let response = harness
            .post_json("/v1/embeddings", json!({"input": ["hello"]}))
            .await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        let vector: Vec<f32> =
            serde_json::from_value(body["data"][0]["embedding"].clone()).unwrap();
        assert_eq!(vector, expected_vector("hello", FAKE_DIMS));
    })
    .await;
    assert!(
        answered.is_ok(),
        "the gateway did not answer within {PROMPTLY:?}"
    );
}

/// Reads until the peer closes the connection (EOF or reset), returning what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Sends `request` and reads one whole response (headers and a `Content-Length` body),
/// leaving the connection open.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed before a whole response");
        received.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&received).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn slow_header_senders_are_cut_while_others_are_served() {
    let harness = Harness::start(|config| config.header_read_timeout_s = 4.0).await;
    let _statuses = healthy_workers(&harness).await;
    let _worker = harness.fake_tokenizer(8).await;
    let addr = harness.gateway.addr();

    // 64 clients sending a request line a byte every 300 ms (it would take ~8 s).
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..64 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        slow.push(tokio::spawn(async move {
            for byte in b"GET /v1/models HTTP/1.1\r\nHost: slow\r\n\r\n" {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let answer = read_until_closed(&mut stream).await;
            (started.elapsed(), answer)
        }));
    }

    serves_normally(&harness).await;
    let served_after = started.elapsed();

    let mut closed_after = Vec::new();
    for task in slow {
        let (elapsed, answer) = timeout(PROMPTLY + PROMPTLY, task)
            .await
            .expect("a slow client was never cut")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            !answer.starts_with("HTTP/1.1 200"),
            "a slow client was served: {answer}"
        );
        closed_after.push(elapsed);
    }
    let first_closed = closed_after.iter().min().unwrap();
    assert!(
        served_after < *first_closed,
        "normal clients were answered after {served_after:?}, only once slow ones were cut \
         ({first_closed:?})"
    );
}

#[tokio::test]
async fn a_body_that_trickles_in_gets_408() {
    let harness = Harness::start(|config| config.body_read_timeout_s = 1.0).await;
    let _worker = harness.fake_tokenizer(8).await;
    let mut stream = TcpStream::connect(harness.gateway.addr()).await.unwrap();
    stream
        .write_all(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
              Content-Length: 200\r\n\r\n{\"input\": [\"",
        )
        .await
        .unwrap();
    let trickle = async {
        loop {
            if stream.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = timeout(Duration::from_millis(1500), trickle).await;
    let answer = timeout(PROMPTLY, read_until_closed(&mut stream))
        .await
        .expect("the connection was neither answered nor closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(answer.contains("body_read_timeout_s"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

#[tokio::test]
async fn idle_connections_are_closed() {
    // idle_timeout_s closes a kept-alive connection with no request in flight...
    let harness = Harness::start(|config| {
        config.idle_timeout_s = 1.0;
        config.header_read_timeout_s = 60.0;
    })
    .await;
    let mut stream = TcpStream::connect(harness.gateway.addr()).await.unwrap();
    let answer = exchange(&mut stream, MODELS_REQUEST).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let rest = timeout(PROMPTLY, read_until_closed(&mut stream))
        .await
        .expect("the idle connection stayed open");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

    // ...and so does a connection that never sends a request, after header_read_timeout_s.
    let harness = Harness::start(|config| {
        config.idle_timeout_s = 60.0;
        config.header_read_timeout_s = 1.0;
    })
    .await;
    let mut silent = TcpStream::connect(harness.gateway.addr()).await.unwrap();
    timeout(PROMPTLY, read_until_closed(&mut silent))
        .await
        .expect("the silent connection stayed open");
    // The wait for the next request on a kept-alive HTTP/1.1 connection is a header read.
    let mut stream = TcpStream::connect(harness.gateway.addr()).await.unwrap();
    exchange(&mut stream, MODELS_REQUEST).await;
    timeout(PROMPTLY, read_until_closed(&mut stream))
        .await
        .expect("the kept-alive connection outlived header_read_timeout_s");
}

#[tokio::test]
async fn at_the_connection_cap_new_connections_wait_until_one_closes() {
    let harness = Harness::start_with_client(None, unpooled(), |config| {
        config.max_connections = 4;
        config.idle_timeout_s = 60.0;
        config.header_read_timeout_s = 60.0;
    })
    .await;
    let addr = harness.gateway.addr();
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let answer = exchange(&mut stream, MODELS_REQUEST).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(stream);
    }

    let waiting = {
        let http = unpooled();
        let url = harness.url("/v1/models");
        tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "a connection beyond max_connections was served (or refused) at once: {:?}",
        waiting.await
    );

    drop(held.pop());
    let status = timeout(PROMPTLY, waiting)
        .await
        .expect("the waiting connection was not served after one closed")
        .unwrap()
        .expect("the waiting request succeeded");
    assert_eq!(status, 200);

    held.clear();
    let again = timeout(PROMPTLY, harness.get("/v1/models"))
        .await
        .expect("served once the held connections closed");
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn the_cap_held_by_slow_clients_frees_itself() {
    let harness = Harness::start_with_client(None, unpooled(), |config| {
        config.max_connections = 8;
        config.header_read_timeout_s = 1.0;
    })
    .await;
    let _statuses = healthy_workers(&harness).await;
    let _worker = harness.fake_tokenizer(8).await;
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(harness.gateway.addr()).await.unwrap();
        stream.write_all(b"GET /v1/mod").await.unwrap();
        slow.push(stream);
    }
    serves_normally(&harness).await;
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files into a fresh
/// directory: (directory, certificate file, key file, certificate PEM).
fn self_signed() -> (
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
    String,
) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "gateway-tls-{}-{}",
        std::process::id(),
        e2e_tests::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let pem = certified.cert.pem();
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (dir, cert, key, pem)
}

#[tokio::test]
async fn https_serves_with_the_configured_certificate() {
    let (dir, cert, key, pem) = self_signed();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let harness = Harness::start_with_client(None, trusting.clone(), |config| {
        config.tls_cert_file = Some(cert.clone());
        config.tls_key_file = Some(key.clone());
        config.header_read_timeout_s = 1.0;
    })
    .await;
    let _statuses = healthy_workers(&harness).await;
    let _worker = harness.fake_tokenizer(8).await;
    assert!(harness.gateway.url().starts_with("https://"));
    serves_normally(&harness).await;

    // ALPN offers h2; HTTP/1.1 clients are served too.
    let h2 = trusting
        .get(harness.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    let http1 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .http1_only()
        .build()
        .unwrap();
    let answer = http1.get(harness.url("/v1/models")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), reqwest::Version::HTTP_11);

    // Plain HTTP to the TLS port is not served.
    let plain = format!("http://{}/v1/models", harness.gateway.addr());
    let refused = reqwest::Client::new().get(plain).send().await;
    assert!(refused.is_err(), "plain HTTP was answered: {refused:?}");

    // A client that opens TCP and never starts the handshake is cut.
    let mut silent = TcpStream::connect(harness.gateway.addr()).await.unwrap();
    timeout(PROMPTLY, read_until_closed(&mut silent))
        .await
        .expect("a connection without a TLS handshake stayed open");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn bad_tls_files_fail_start_naming_the_file() {
    let (dir, cert, key, _) = self_signed();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let missing = dir.join("missing.pem");
    let (other_dir, _, other_key, _) = self_signed();
    for (cert_file, key_file, named) in [
        (&missing, &key, &missing),
        (&garbage, &key, &garbage),
        (&cert, &garbage, &garbage),
        (&cert, &other_key, &other_key),
    ] {
        let mut config = gateway::GatewayConfig {
            host: "127.0.0.1".into(),
            port: 0,
            tls_cert_file: Some(cert_file.clone()),
            tls_key_file: Some(key_file.clone()),
            ..gateway::GatewayConfig::default()
        };
        config.nats.url = format!("nats://127.0.0.1:{}", e2e_tests::free_port());
        let error = format!(
            "{:#}",
            gateway::spawn(config).await.err().expect("start refused")
        );
        assert!(error.contains(&named.display().to_string()), "{error}");
    }
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(other_dir).unwrap();
}

#[tokio::test]
async fn a_public_bind_without_keys_is_refused_when_required() {
    let mut config = gateway::GatewayConfig {
        host: "0.0.0.0".into(),
        port: 0,
        require_api_keys_on_public_bind: true,
        ..gateway::GatewayConfig::default()
    };
    config.nats.url = format!("nats://127.0.0.1:{}", e2e_tests::free_port());
    let error = gateway::spawn(config).await.err().expect("start refused");
    let error = error.to_string();
    assert!(error.contains("refusing to serve on 0.0.0.0"), "{error}");
    assert!(error.contains("REQUIRE_API_KEYS_ON_PUBLIC_BIND"), "{error}");

    // On loopback the same setting serves.
    let harness = Harness::start(|config| config.require_api_keys_on_public_bind = true).await;
    assert_eq!(harness.get("/v1/models").await.status(), 200);
}

#[test]
fn the_binary_refuses_a_public_bind_without_keys_under_the_production_profile() {
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--host", "0.0.0.0", "--port", "0", "--nats-url"])
        .arg(format!("nats://127.0.0.1:{}", e2e_tests::free_port()))
        .env(
            "QWEN3_EMBED_CONFIG_DIR",
            e2e_tests::repo_root().join("deploy/config"),
        )
        .env("QWEN3_EMBED_PROFILE", "production")
        .env_remove("QWEN3_EMBED_API_KEYS")
        .env_remove("QWEN3_EMBED__GATEWAY__REQUIRE_API_KEYS_ON_PUBLIC_BIND")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PROMPTLY + PROMPTLY {
            let _ = child.kill();
            panic!("the gateway served a public address without keys under production");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("refusing to serve on 0.0.0.0"), "{stderr}");
}
