//! `/_kubesim/...`: fault injection and the request log over HTTP. No real
//! client uses these paths, and faults/stop-answering never apply to them.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::json;

use super::resources::Query;
use super::{Body, Shared, json_response};
use crate::error::ApiError;
use crate::faults::{Faults, StopMode};

pub(crate) fn handle(
    sh: &Arc<Shared>,
    method: &Method,
    path: &str,
    q: Query<'_>,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let ok = |extra: serde_json::Value| {
        json_response(StatusCode::OK, &json!({"ok": true, "result": extra}))
    };
    match (method, path) {
        (&Method::GET, "requests") => Ok(json_response(
            StatusCode::OK,
            &serde_json::to_value(sh.reqlog.snapshot()).unwrap_or_default(),
        )),
        (&Method::DELETE, "requests") => {
            sh.reqlog.clear();
            Ok(ok(json!(null)))
        }
        (&Method::POST, "drop-watches") => {
            sh.drop_watches();
            Ok(ok(json!(null)))
        }
        (&Method::POST, "freeze-watches") => {
            sh.freeze_watches();
            Ok(ok(json!(null)))
        }
        (&Method::POST, "streaming-lists") => {
            let on = match q.get("enabled") {
                None | Some("true" | "1") => true,
                Some("false" | "0") => false,
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "enabled must be true or false, not {other:?}"
                    )));
                }
            };
            sh.set_streaming_lists(on);
            Ok(ok(json!({"enabled": on})))
        }
        (&Method::POST, "compact") => {
            let store = sh.store();
            store.compact();
            Ok(ok(
                json!({"compactedResourceVersion": store.compacted_rv().to_string()}),
            ))
        }
        (&Method::GET, "faults") => Ok(ok(serde_json::to_value(sh.faults()).unwrap_or_default())),
        (&Method::POST | &Method::PUT, "faults") => {
            let f: Faults = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("invalid faults: {e}")))?;
            sh.set_faults(Some(f));
            Ok(ok(json!(null)))
        }
        (&Method::DELETE, "faults") => {
            sh.set_faults(None);
            Ok(ok(json!(null)))
        }
        (&Method::POST, "stop") => {
            let mode = match q.get("mode") {
                None | Some("hang") => StopMode::Hang,
                Some("reset") => StopMode::Reset,
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "mode must be hang or reset, not {other:?}"
                    )));
                }
            };
            sh.stop.send_replace(mode);
            Ok(ok(json!(null)))
        }
        (&Method::POST, "resume") => {
            sh.stop.send_replace(StopMode::Answering);
            Ok(ok(json!(null)))
        }
        (&Method::POST, "restart") => {
            let keep = !matches!(q.get("keepState"), Some("false" | "0"));
            let sh = sh.clone();
            // The restart aborts this very connection; give the response a moment to leave first.
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                if let Err(e) = sh.restart(keep).await {
                    tracing::error!(error = %e, "admin restart failed");
                }
            });
            Ok(ok(json!({"keepState": keep})))
        }
        (&Method::GET, "state") => {
            let store = sh.store();
            Ok(ok(json!({
                "resourceVersion": store.current_rv().to_string(),
                "compactedResourceVersion": store.compacted_rv().to_string(),
            })))
        }
        _ => Err(ApiError::path_not_found()),
    }
}
