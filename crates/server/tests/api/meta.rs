//! Health, readiness, OpenAPI and the docs page.

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn health_readiness_openapi_and_docs() {
    let app = spawn_app().await;
    let (code, health) = app.get_json("/healthz").await;
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")));
    let (code, ready) = app.get_json("/readyz").await;
    assert_eq!(code, 200);
    assert_eq!(ready["checks"].as_array().unwrap().len(), 2);
    let (code, openapi) = app.get_json("/openapi.json").await;
    assert_eq!(code, 200);
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/tools/{tool}/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/result",
        "/v1/jobs",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "{path} is documented");
    }
    assert!(openapi["components"]["schemas"].get("JobStatus").is_some());
    // Operation ids name one operation each (code generators key on them).
    let mut ids = std::collections::BTreeSet::new();
    for operations in openapi["paths"].as_object().unwrap().values() {
        for operation in operations.as_object().unwrap().values() {
            if let Some(id) = operation["operationId"].as_str() {
                assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            }
        }
    }
    let docs = app.get_text("/docs").await;
    assert!(
        docs.contains("/openapi.json") && !docs.contains("https://"),
        "the docs page loads nothing from elsewhere"
    );
    let index = app.get_text("/").await;
    assert!(
        index.contains("/ui/app.js") && !index.contains("https://"),
        "{index}"
    );
    for (path, media_type) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/v1/client.js", "text/javascript"),
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let served = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(served.starts_with(media_type), "{path}: {served}");
        let text = response.text().await.unwrap();
        assert!(
            !text.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }
    assert_problem(
        app.client.get(app.url("/nowhere")).send().await.unwrap(),
        404,
        "not-found",
    )
    .await;
}

/// Every error answer is a problem document with a code, also those the framework makes
/// itself: a query that does not parse, an unsupported Content-Encoding, a method the
/// resource does not answer (after `curl -X POST -L` follows a `303`), an unknown path.
#[tokio::test]
async fn the_frameworks_own_errors_are_problem_documents() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/v1/jobs?limit=abc"))
        .send()
        .await
        .unwrap();
    let body = assert_problem(response, 400, "bad-request").await;
    assert!(body["detail"].as_str().unwrap().contains("limit"), "{body}");

    let response = app
        .client
        .post(app.url("/v1/tools/analyzer/jobs"))
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(response, 415, "unsupported-media-type").await;

    let location = app
        .submit_ok("analyzer", &serde_json::json!({"inputs": {"records": []}}))
        .await;
    let response = app
        .client
        .post(app.url(&format!("{location}/result")))
        .send()
        .await
        .unwrap();
    let allow = response.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET"), "{allow}");
    assert_problem(response, 405, "method-not-allowed").await;

    let response = app.client.get(app.url("/v2/nothing")).send().await.unwrap();
    assert_problem(response, 404, "not-found").await;
}

/// CORS: a page on an allowed origin may call the API (the preflight passes without a
/// key, for the methods and headers the API uses, and the answers expose the headers a
/// client reads); any other origin, and every origin by default, gets no CORS header.
#[tokio::test]
async fn pages_on_allowed_origins_may_call_the_api() {
    let app = crate::helpers::spawn_app_with("cors_origins = [\"https://app.example\"]").await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/tools/analyzer/jobs"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key,prefer",
            )
            .send()
    };
    let response = preflight("https://app.example").await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    for name in [
        "authorization",
        "idempotency-key",
        "prefer",
        "last-event-id",
    ] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));

    let response = app
        .client
        .get(app.url("/v1/tools"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for name in ["location", "retry-after", "operation-location", "ratelimit"] {
        assert!(exposed.contains(name), "{exposed}");
    }
    let response = preflight("https://evil.example").await.unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let closed = spawn_app().await;
    let response = closed
        .client
        .get(closed.url("/v1/tools"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}
