//! Bad input gets the same HTTP codes, reasons and Status bodies a real API server answers.

mod common;

use common::*;
use serde_json::json;

/// Asserts a v1 Status error with this code and reason; returns its message.
fn status(r: &Resp, code: u16, reason: &str) -> String {
    let s = r.json();
    assert_eq!(r.status, code, "{s}");
    assert_eq!(s["kind"], "Status", "{s}");
    assert_eq!(s["apiVersion"], "v1");
    assert_eq!(s["status"], "Failure");
    assert_eq!(s["code"], code);
    assert_eq!(s["reason"], reason, "{s}");
    s["message"].as_str().unwrap().to_string()
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn malformed_bodies_are_400_bad_request() {
    let sim = start().await;
    status(
        &http(&sim, "POST", CMS, None, "{not json").await,
        400,
        "BadRequest",
    );
    status(
        &http(&sim, "POST", CMS, None, "[1,2]").await,
        400,
        "BadRequest",
    );
    let wrong_kind = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}});
    status(
        &http(&sim, "POST", CMS, None, &wrong_kind.to_string()).await,
        400,
        "BadRequest",
    );
    let wrong_version =
        json!({"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    status(
        &http(&sim, "POST", CMS, None, &wrong_version.to_string()).await,
        400,
        "BadRequest",
    );
}

#[tokio::test]
async fn unknown_paths_and_objects_are_404_not_found() {
    let sim = start().await;
    status(
        &http(&sim, "GET", "/api/v1/widgets", None, "").await,
        404,
        "NotFound",
    );
    status(
        &http(&sim, "GET", "/apis/nope.example.com/v1", None, "").await,
        404,
        "NotFound",
    );
    status(
        &http(&sim, "GET", "/totally/unknown", None, "").await,
        404,
        "NotFound",
    );
    let r = http(&sim, "GET", &format!("{CMS}/missing"), None, "").await;
    assert_eq!(
        status(&r, 404, "NotFound"),
        "configmaps \"missing\" not found"
    );
    assert_eq!(
        r.json()["details"],
        json!({"name": "missing", "kind": "configmaps"})
    );
    let r = http(
        &sim,
        "GET",
        "/apis/apps/v1/namespaces/default/deployments/missing",
        None,
        "",
    )
    .await;
    assert_eq!(
        status(&r, 404, "NotFound"),
        "deployments.apps \"missing\" not found"
    );
    assert_eq!(r.json()["details"]["group"], "apps");
    status(
        &http(
            &sim,
            "PUT",
            &format!("{CMS}/missing"),
            None,
            &cm("missing", "default", "1").to_string(),
        )
        .await,
        404,
        "NotFound",
    );
    status(
        &http(&sim, "DELETE", &format!("{CMS}/missing"), None, "").await,
        404,
        "NotFound",
    );
}

#[tokio::test]
async fn namespace_problems_are_404_or_400() {
    let sim = start().await;
    let r = http(
        &sim,
        "POST",
        "/api/v1/namespaces/ghost/configmaps",
        None,
        &cm("x", "ghost", "1").to_string(),
    )
    .await;
    assert_eq!(
        status(&r, 404, "NotFound"),
        "namespaces \"ghost\" not found"
    );
    let r = http(
        &sim,
        "POST",
        CMS,
        None,
        &cm("x", "kube-system", "1").to_string(),
    )
    .await;
    assert_eq!(
        status(&r, 400, "BadRequest"),
        "the namespace of the provided object does not match the namespace sent on the request"
    );
}

#[tokio::test]
async fn invalid_objects_are_422_and_duplicates_409() {
    let sim = start().await;
    let r = http(
        &sim,
        "POST",
        CMS,
        None,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}).to_string(),
    )
    .await;
    assert_eq!(
        status(&r, 422, "Invalid"),
        "ConfigMap \"\" is invalid: metadata.name: Required value: name or generateName is required"
    );
    assert_eq!(r.json()["details"]["causes"][0]["field"], "metadata.name");
    status(
        &http(
            &sim,
            "POST",
            CMS,
            None,
            &cm("Bad_Name", "default", "1").to_string(),
        )
        .await,
        422,
        "Invalid",
    );
    assert_eq!(
        http(
            &sim,
            "POST",
            CMS,
            None,
            &cm("dup", "default", "1").to_string()
        )
        .await
        .status,
        201
    );
    let r = http(
        &sim,
        "POST",
        CMS,
        None,
        &cm("dup", "default", "1").to_string(),
    )
    .await;
    assert_eq!(
        status(&r, 409, "AlreadyExists"),
        "configmaps \"dup\" already exists"
    );
    let generated = http(
        &sim,
        "POST",
        CMS,
        None,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "gen-"}})
            .to_string(),
    )
    .await;
    assert_eq!(generated.status, 201);
    let name = generated.json()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
}

#[tokio::test]
async fn stale_resource_version_on_update_is_409_conflict() {
    let sim = start().await;
    let c = sim
        .create("v1", "ConfigMap", cm("x", "default", "1"))
        .unwrap();
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "x",
        json!({"data": {"k": "2"}}),
    )
    .unwrap();
    let r = http(&sim, "PUT", &format!("{CMS}/x"), None, &c.to_string()).await;
    let msg = status(&r, 409, "Conflict");
    assert!(msg.contains("the object has been modified"), "{msg}");
    let mut renamed = c.clone();
    renamed["metadata"]["name"] = json!("y");
    renamed["metadata"]["resourceVersion"] = json!(null);
    status(
        &http(&sim, "PUT", &format!("{CMS}/x"), None, &renamed.to_string()).await,
        400,
        "BadRequest",
    );
}

#[tokio::test]
async fn bad_selectors_tokens_and_resource_versions_are_400() {
    let sim = start().await;
    status(
        &http(&sim, "GET", &format!("{CMS}?labelSelector=a%20b"), None, "").await,
        400,
        "BadRequest",
    );
    status(
        &http(
            &sim,
            "GET",
            &format!("{CMS}?labelSelector=app%20in%20(x"),
            None,
            "",
        )
        .await,
        400,
        "BadRequest",
    );
    let r = http(
        &sim,
        "GET",
        "/api/v1/pods?fieldSelector=spec.bogus%3Dx",
        None,
        "",
    )
    .await;
    assert_eq!(
        status(&r, 400, "BadRequest"),
        "field label not supported: spec.bogus"
    );
    status(
        &http(
            &sim,
            "GET",
            "/api/v1/configmaps?fieldSelector=spec.nodeName%3Dx",
            None,
            "",
        )
        .await,
        400,
        "BadRequest",
    );
    assert_eq!(
        http(
            &sim,
            "GET",
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dx,status.phase!%3DRunning",
            None,
            ""
        )
        .await
        .status,
        200
    );
    let r = http(
        &sim,
        "GET",
        &format!("{CMS}?limit=1&continue=garbage!!"),
        None,
        "",
    )
    .await;
    assert!(status(&r, 400, "BadRequest").starts_with("continue key is not valid"));
    status(
        &http(&sim, "GET", &format!("{CMS}?resourceVersion=abc"), None, "").await,
        400,
        "BadRequest",
    );
    status(
        &http(
            &sim,
            "GET",
            &format!("{CMS}?resourceVersionMatch=Exact"),
            None,
            "",
        )
        .await,
        422,
        "Invalid",
    );
    status(
        &http(
            &sim,
            "GET",
            &format!("{CMS}?resourceVersion=1&resourceVersionMatch=Sideways"),
            None,
            "",
        )
        .await,
        422,
        "Invalid",
    );
    status(
        &http(
            &sim,
            "GET",
            &format!("{CMS}?watch=true&resourceVersion=xyz"),
            None,
            "",
        )
        .await,
        400,
        "BadRequest",
    );
    status(
        &http(
            &sim,
            "GET",
            &format!("{CMS}?watch=true&sendInitialEvents=true"),
            None,
            "",
        )
        .await,
        422,
        "Invalid",
    );
}

#[tokio::test]
async fn wrong_methods_and_media_types_are_405_415_and_apply_needs_a_manager() {
    let sim = start().await;
    sim.create("v1", "ConfigMap", cm("x", "default", "1"))
        .unwrap();
    status(
        &http(&sim, "POST", &format!("{CMS}/x"), None, "{}").await,
        405,
        "MethodNotAllowed",
    );
    status(
        &http(&sim, "PUT", CMS, None, "{}").await,
        405,
        "MethodNotAllowed",
    );
    status(
        &http(&sim, "DELETE", "/api", None, "").await,
        405,
        "MethodNotAllowed",
    );
    status(
        &http(&sim, "PATCH", &format!("{CMS}/x"), Some("text/plain"), "{}").await,
        415,
        "UnsupportedMediaType",
    );
    let r = http(
        &sim,
        "PATCH",
        &format!("{CMS}/x"),
        Some("application/apply-patch+yaml"),
        "data:\n  k: v\n",
    )
    .await;
    status(&r, 422, "Invalid");
    status(
        &http(
            &sim,
            "PATCH",
            &format!("{CMS}/x"),
            Some("application/merge-patch+json"),
            "{oops",
        )
        .await,
        400,
        "BadRequest",
    );
    let bad_json_patch = r#"[{"op":"test","path":"/data/k","value":"nope"}]"#;
    status(
        &http(
            &sim,
            "PATCH",
            &format!("{CMS}/x"),
            Some("application/json-patch+json"),
            bad_json_patch,
        )
        .await,
        422,
        "Invalid",
    );
}

#[tokio::test]
async fn watch_from_a_too_old_resource_version_is_200_then_an_exact_410_error_event() {
    let sim = start().await;
    sim.create("v1", "ConfigMap", cm("x", "default", "1"))
        .unwrap();
    sim.compact();
    let lines = watch_lines(&sim, &format!("{CMS}?watch=1&resourceVersion=2"), 2).await;
    assert_eq!(
        lines.len(),
        1,
        "the stream closes after the error: {lines:?}"
    );
    let compacted = sim.compacted_resource_version();
    assert_eq!(
        lines[0],
        json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: 2 ({compacted})"), "reason": "Expired", "code": 410}})
    );
}
