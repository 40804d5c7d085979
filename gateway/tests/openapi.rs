//! The API's description: `/openapi.json` lists exactly the routes the router serves (from
//! the one route table) and validates as OpenAPI 3.1 with a real validator; every request
//! field it documents is read by the decoder; `/docs` is served, self-contained, and open
//! without an API key like the document says.

mod support;

use std::collections::BTreeSet;

use e2e_tests::repo_root;
use gateway::api_keys::ApiKeys;
use gateway::http::routes::routes;
use serde_json::{Value, json};
use support::{Harness, error_of};

const KEY: &str = "sk-openapi-test";

async fn document(harness: &Harness, path: &str) -> Value {
    let response = harness.get(path).await;
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.expect("the document is JSON")
}

/// Every (method, path) the document lists.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut all = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            all.insert((method.clone(), path.clone()));
        }
    }
    all
}

#[tokio::test]
async fn the_document_lists_every_route_the_router_serves() {
    for root_path in ["/api/v1", "/"] {
        let harness = Harness::start(|config| config.root_path = root_path.into()).await;
        let prefix = if root_path == "/" { "" } else { "/api/v1" };
        let document = document(&harness, "/openapi.json").await;
        assert_eq!(document["openapi"], "3.1.0");
        let served: BTreeSet<(String, String)> = routes(prefix)
            .into_iter()
            .map(|route| {
                (
                    json!(route.method).as_str().unwrap().to_string(),
                    route.path,
                )
            })
            .collect();
        assert_eq!(operations(&document), served, "root_path {root_path}");
        for expected in [
            ("post", "/v1/embeddings"),
            ("get", "/v1/models"),
            ("post", "/v1/rerank"),
            ("post", "/rerank"),
            ("get", "/health"),
            ("get", "/debug"),
            ("get", "/metrics"),
            ("get", "/openapi.json"),
            ("get", "/docs"),
        ] {
            let key = (expected.0.to_string(), expected.1.to_string());
            assert!(served.contains(&key), "{expected:?} is not served");
        }
        assert!(served.contains(&("post".into(), format!("{prefix}/embedding/api"))));
        if !prefix.is_empty() {
            for alias in ["/health", "/debug", "/openapi.json", "/docs"] {
                assert!(served.contains(&("get".into(), format!("{prefix}{alias}"))));
            }
            // The document is served under root_path too, and is the same.
            assert_eq!(
                harness
                    .get("/api/v1/openapi.json")
                    .await
                    .json::<Value>()
                    .await
                    .unwrap(),
                document
            );
        }
        // Each documented operation is routed: its method is neither 404 nor 405, and the
        // other method on its path is 405 (nothing undocumented is served there).
        for (method, path) in operations(&document) {
            let (answer, other) = if method == "post" {
                (
                    harness.post_json(&path, json!({})).await,
                    harness.get(&path).await,
                )
            } else {
                (
                    harness.get(&path).await,
                    harness.post_json(&path, json!({})).await,
                )
            };
            let status = answer.status().as_u16();
            assert!(
                status != 404 || path.contains("embedding"),
                "{method} {path}: {status}"
            );
            if status == 404 {
                assert_ne!(
                    error_of(answer).await["code"],
                    "not_found",
                    "{method} {path}"
                );
            }
            assert_ne!(status, 405, "{method} {path}");
            assert_eq!(other.status(), 405, "the other method on {path}");
        }
    }
}

#[tokio::test]
async fn the_document_validates_as_openapi_3_1() {
    let python = repo_root().join(".venv/bin/python");
    if !python.exists() {
        println!("skipped: no .venv (deploy/local/setup.sh installs openapi-spec-validator)");
        return;
    }
    let harness = Harness::start(|_| {}).await;
    let document = document(&harness, "/openapi.json").await;
    let dir = std::env::temp_dir().join(format!("openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&document).unwrap()).unwrap();
    let output = std::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator", "--schema", "3.1.0"])
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    std::fs::remove_dir_all(&dir).ok();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the document does not validate (deploy/local/setup.sh installs openapi-spec-validator):\n{report}"
    );
    assert!(report.contains("OK"), "{report}");

    // Every $ref points at a schema the document holds.
    let text = document.to_string();
    for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &piece[..piece.find('"').unwrap()];
        assert!(
            document["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
    // Every operation documents its success answer, and those with a body every refusal.
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path}"
            );
            if operation.get("requestBody").is_some() {
                for status in [
                    "400", "401", "413", "415", "429", "500", "502", "503", "504",
                ] {
                    let body = &responses[status]["content"]["application/json"]["schema"]["$ref"];
                    // TEI- and Cohere-shaped routes answer their API's error body.
                    let tag = operation["tags"][0].as_str().unwrap_or("");
                    let schema = match tag {
                        "TEI" => "TeiErrorBody",
                        "Cohere" => "CohereErrorBody",
                        _ => "ErrorBody",
                    };
                    assert_eq!(
                        body,
                        &format!("#/components/schemas/{schema}"),
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

/// The message of a refusal of field `name`, in whichever API's shape: OpenAI's (whose
/// `param` must name the field), TEI's `{error, error_type}` or Cohere's `{message}`.
async fn refusal_message(response: reqwest::Response, name: &str) -> String {
    let body: Value = response.json().await.expect("error body is JSON");
    if body["error"].is_object() {
        assert_eq!(body["error"]["param"], name, "{body}");
        return body["error"]["message"].as_str().unwrap().to_string();
    }
    if let Some(error) = body["error"].as_str() {
        assert_eq!(body["error_type"], "Validation", "{body}");
        return error.to_string();
    }
    body["message"]
        .as_str()
        .expect("a Cohere error")
        .to_string()
}

/// The object schema a property holds (directly or as one of its choices), if any.
fn object_schema<'a>(property: &'a Value, schemas: &'a Value) -> Option<&'a Value> {
    let choices = property["oneOf"].as_array().into_iter().flatten();
    let reference = std::iter::once(property)
        .chain(choices)
        .find_map(|p| p["$ref"].as_str())?;
    let schema = &schemas[reference.rsplit('/').next().unwrap()];
    (schema["type"] == "object").then_some(schema)
}

/// A valid value of an object schema: each required field with a text, a list of one text,
/// a list of one token id, or (nested objects) a valid object.
fn valid_object(schema: &Value, schemas: &Value) -> Value {
    let mut valid = json!({});
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap();
        let property = &schema["properties"][name];
        let items = &property["items"];
        valid[name] = if let Some(object) = object_schema(property, schemas) {
            valid_object(object, schemas)
        } else if property["type"] != "array" {
            json!("a")
        } else if items["type"] == "integer" || items["oneOf"][0]["type"] == "integer" {
            json!([1])
        } else {
            json!(["a"])
        };
    }
    valid
}

/// A value of the wrong type for a field: an object, or a string where it takes an object.
fn wrong(property: &Value, schemas: &Value) -> Value {
    match object_schema(property, schemas) {
        Some(_) => json!("wrong"),
        None => json!({"wrong": true}),
    }
}

#[tokio::test]
async fn every_documented_request_field_is_read_and_named_in_refusals() {
    let harness = Harness::start(|_| {}).await;
    let document = document(&harness, "/openapi.json").await;
    let schemas = &document["components"]["schemas"];
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        let Some(operation) = item.get("post") else {
            continue;
        };
        let reference = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .expect("a request body schema");
        let schema = &schemas[reference.rsplit('/').next().unwrap()];
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let valid = valid_object(schema, schemas);
        for (name, property) in schema["properties"].as_object().unwrap() {
            let mut body = valid.clone();
            body[name] = wrong(property, schemas);
            let response = harness.post_json(path, body).await;
            assert_eq!(response.status(), 400, "{path} {name}");
            let message = refusal_message(response, name).await;
            assert!(message.contains(name.as_str()), "{path}: {message}");
            checked += 1;
        }
        for name in required {
            let mut body = valid.clone();
            body.as_object_mut().unwrap().remove(name);
            let message = refusal_message(harness.post_json(path, body).await, name).await;
            assert_eq!(message, format!("{name} is required"), "{path}");
        }
    }
    assert!(checked >= 20, "only {checked} fields checked");
}

#[tokio::test]
async fn the_reference_page_is_self_contained_and_open() {
    let harness = Harness::start_with_key(Some(KEY), |config| {
        config.api_keys = ApiKeys::from_list(KEY, "test").unwrap();
    })
    .await;
    for path in ["/docs", "/api/v1/docs"] {
        let response = harness.get(path).await;
        assert_eq!(response.status(), 200, "{path} needs no key");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let page = response.text().await.unwrap();
        assert!(
            page.contains("fetch(\"openapi.json\")"),
            "loads the document beside it"
        );
        // Nothing from elsewhere: no absolute URL at all, so no script, style or font.
        for remote in ["http://", "https://", "//cdn", "@import"] {
            assert!(!page.contains(remote), "{path} refers to `{remote}`");
        }
        assert!(
            !page.contains("<script src") && !page.contains("<link"),
            "{path}"
        );
    }
    // The document says which routes need the key; the gateway agrees.
    let document = harness
        .http
        .get(harness.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(document["components"]["securitySchemes"]["api_key"]["scheme"] == "bearer");
    for (method, path) in operations(&document) {
        let operation = &document["paths"][&path][&method];
        let request = if method == "post" {
            harness.http.post(harness.url(&path)).json(&json!({}))
        } else {
            harness.http.get(harness.url(&path))
        };
        let status = request.send().await.unwrap().status().as_u16();
        let keyed = operation.get("security").is_some();
        assert_eq!(status == 401, keyed, "{method} {path}: {status}");
        assert_eq!(
            operation["responses"].get("401").is_some(),
            keyed,
            "{method} {path} documents its 401"
        );
    }
}
