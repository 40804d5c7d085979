//! NATS over mutual TLS end to end: certificates made at test time (a CA, a server
//! certificate for 127.0.0.1 and localhost, a client certificate), a nats-server that
//! requires TLS and verifies client certificates, and the real tokenizer and CPU GPU workers
//! and the gateway all connecting through `[nats]` TLS settings. An embedding goes through
//! HTTP; a client without a client certificate, or without the CA, is refused with a TLS
//! error, and a gateway without a client certificate reports itself unhealthy (503).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::nats::NatsConfig;
use e2e_tests::{NatsServer, tiny_model_dir};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};
use support::{
    floats, gateway_config, golden, max_abs_diff, start_gpu_with, start_tokenizer_with,
    wait_for_workers, wait_healthy,
};

/// PEM files of one test's certificates, in a directory removed on drop.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    /// A CA; a server certificate for 127.0.0.1 and localhost and a client certificate, both
    /// signed by it. Written as `ca.pem`, `server.pem`, `server-key.pem`, `client.pem`,
    /// `client-key.pem` in a directory named after `test` (tests run in parallel).
    fn generate(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nats-tls-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("certificate directory");

        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.distinguished_name
            .push(DnType::CommonName, "qwen3-embed test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, name: &str| {
            let mut params = CertificateParams::new(names).expect("leaf parameters");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "nats-server",
        );
        let (client, client_key) = leaf(
            vec!["qwen3-embed-client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "qwen3-embed-client",
        );
        for (file, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server),
            ("server-key.pem", server_key),
            ("client.pem", client),
            ("client-key.pem", client_key),
        ] {
            std::fs::write(dir.join(file), pem).expect("write PEM");
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A nats-server that speaks only TLS and requires a client certificate signed by the CA.
fn start_tls_server(certs: &Certificates) -> NatsServer {
    NatsServer::start_with_args(&[
        "--tlsverify",
        "--tlscert",
        &certs.arg("server.pem"),
        "--tlskey",
        &certs.arg("server-key.pem"),
        "--tlscacert",
        &certs.arg("ca.pem"),
    ])
}

/// `[nats]` settings for the TLS server, with or without the client certificate.
fn tls_config(server: &NatsServer, certs: &Certificates, client_cert: bool) -> NatsConfig {
    NatsConfig {
        url: server.url(),
        tls_ca_file: Some(certs.path("ca.pem")),
        tls_cert_file: client_cert.then(|| certs.path("client.pem")),
        tls_key_file: client_cert.then(|| certs.path("client-key.pem")),
        ..NatsConfig::default()
    }
}

/// Connects once, without retrying, and returns the error text; panics if the server
/// accepted the client.
async fn refusal(options: async_nats::ConnectOptions, url: &str, what: &str) -> String {
    let attempt = tokio::time::timeout(Duration::from_secs(10), options.connect(url))
        .await
        .unwrap_or_else(|_| panic!("{what}: the connection attempt neither failed nor succeeded"));
    match attempt {
        Ok(_) => panic!("{what}: the server accepted the client"),
        Err(error) => {
            let error = error.to_string();
            eprintln!("{what}: refused: {error}");
            error
        }
    }
}

/// The first document case of the fixture's golden vectors: its text and vector.
fn golden_document() -> (String, Vec<f32>) {
    let golden = golden();
    let case = golden["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["is_query"] == false)
        .expect("a document case")
        .clone();
    (
        case["text"].as_str().expect("text").to_string(),
        floats(&case["embedding"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_over_mutual_tls() {
    let certs = Certificates::generate("embedding");
    let server = start_tls_server(&certs);
    let good = tls_config(&server, &certs, true);

    // The settings the binaries use connect, and a TLS client sees the server as TLS-only.
    let client = good
        .options("test")
        .await
        .expect("TLS settings are valid")
        .connect(server.url())
        .await
        .expect("a client with the CA and a client certificate connects");
    tokio::time::timeout(Duration::from_secs(10), client.flush())
        .await
        .expect("flush within 10 s")
        .expect("flush over TLS");
    assert!(
        client.server_info().tls_required,
        "the server does not require TLS"
    );

    let model = tiny_model_dir();
    let tokenizer = start_tokenizer_with(good.clone(), &model);
    let gpu = start_gpu_with(good.clone(), &model);
    wait_for_workers(&client).await;
    let gateway = gateway::spawn(gateway_config(good))
        .await
        .expect("gateway starts");
    let base = gateway.url();
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, Duration::from_secs(30)).await;

    let (text, expected) = golden_document();
    let response = http
        .post(format!("{base}/v1/embeddings"))
        .json(&json!({"model": "qwen3-tiny", "input": [text]}))
        .send()
        .await
        .expect("embedding request sent");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON body");
    let got = floats(&answer["data"][0]["embedding"]);
    let diff = max_abs_diff(&got, &expected);
    assert!(diff < 2e-5, "max abs diff {diff}");

    gateway.shutdown().await.expect("gateway stops");
    gpu.stop().await.expect("GPU worker stops");
    tokenizer.stop().await.expect("tokenizer worker stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_client_certificate_or_the_ca_are_refused() {
    let certs = Certificates::generate("refused");
    let server = start_tls_server(&certs);
    let url = server.url();

    // No client certificate: the server ends the handshake.
    let without_cert = tls_config(&server, &certs, false)
        .options("test")
        .await
        .expect("CA-only settings are valid");
    let error = refusal(without_cert, &url, "no client certificate").await;
    assert!(
        is_tls_refusal(&error),
        "no client certificate: unclear error `{error}`"
    );

    // A client certificate but not the CA: the client does not trust the server.
    let without_ca = NatsConfig {
        tls_ca_file: None,
        ..tls_config(&server, &certs, true)
    }
    .options("test")
    .await
    .expect("certificate-only settings are valid");
    let error = refusal(without_ca, &url, "no CA").await;
    assert!(is_tls_refusal(&error), "no CA: unclear error `{error}`");

    // No TLS settings: the server requires TLS, the client upgrades with the system's roots
    // and does not trust the server.
    let error = refusal(async_nats::ConnectOptions::new(), &url, "no TLS settings").await;
    assert!(
        is_tls_refusal(&error),
        "no TLS settings: unclear error `{error}`"
    );

    // A gateway without a client certificate serves HTTP but reports itself unhealthy.
    let mut config = gateway_config(tls_config(&server, &certs, false));
    config.nats.connect_timeout_s = 0.5;
    let gateway = gateway::spawn(config)
        .await
        .expect("a refused TLS handshake does not stop the start");
    let base = gateway.url();
    let http = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(2);
    let mut answers = 0;
    while Instant::now() < until {
        if let Ok(response) = http.get(format!("{base}/health")).send().await {
            assert_eq!(
                response.status(),
                503,
                "healthy without a client certificate"
            );
            answers += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answers > 5,
        "the gateway answered /health only {answers} times"
    );
    tokio::time::timeout(Duration::from_secs(10), gateway.shutdown())
        .await
        .expect("a gateway that never connected still stops")
        .expect("run returns Ok");
}

/// Whether a connection error names TLS or a certificate (what an operator needs to see).
fn is_tls_refusal(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    ["tls", "certificate", "handshake", "alert"]
        .iter()
        .any(|word| error.contains(word))
}
