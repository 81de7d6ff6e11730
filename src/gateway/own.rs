//! triage's own endpoints: `GET /health` (liveness and each backend's reachability),
//! `GET /status` (what `triage status --json` prints) and `POST /route` (the decision for a
//! prompt, as `triage route --json`, without calling a model).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, Dialect, Plan, Routed, Shared};
use crate::backend::Target;
use crate::config::Tier;
use crate::engine;

const D: Dialect = Dialect::Ollama;

/// Always 200 while the gateway runs; `backends` says which model servers answer.
pub(crate) async fn health(State(gateway): State<Shared>) -> Json<Value> {
    let config = gateway.config();
    let client = gateway.engine.client();
    let checks = config.endpoints.iter().map(|(name, endpoint)| async move {
        let target = Target { name, endpoint };
        let version = client.version(target).await;
        json!({
            "name": name,
            "kind": endpoint.kind,
            "url": endpoint.url.as_str(),
            "reachable": version.is_ok(),
            "version": version.as_ref().ok(),
            "error": version.as_ref().err().map(ToString::to_string),
        })
    });
    let backends = futures::future::join_all(checks).await;
    let reachable = backends.iter().filter(|b| b["reachable"] == true).count();
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "backends_reachable": reachable,
        "backends": backends,
    }))
}

pub(crate) async fn status(State(gateway): State<Shared>) -> Json<Value> {
    let status = engine::status::gather(&gateway.engine, &gateway.monitor).await;
    Json(serde_json::to_value(status).unwrap_or_else(|e| json!({"error": e.to_string()})))
}

#[derive(Debug, Deserialize)]
pub(crate) struct RouteBody {
    prompt: String,
    selection: Option<String>,
    /// An LSP languageId of the selection.
    language: Option<String>,
    /// `fast`, `coder` or `heavy`.
    tier: Option<String>,
    /// `auto`, `auto:TIER` or a model name, as in the chat endpoints.
    model: Option<String>,
}

pub(crate) async fn route(
    State(gateway): State<Shared>,
    body: Result<Json<RouteBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|r| ApiError::from_rejection(D, r))?;
    let mut request = engine::Request {
        prompt: body.prompt,
        selection: body.selection,
        language_id: body.language,
        ..engine::Request::default()
    };
    if !super::has_text(&request.prompt) {
        return Err(ApiError::bad_request(
            D,
            "`prompt` is empty: send the text to route",
        ));
    }
    // Exactly the names the document lists (the command line is more forgiving).
    request.force.tier = match body.tier.as_deref() {
        None => None,
        Some("fast") => Some(Tier::Fast),
        Some("coder") => Some(Tier::Coder),
        Some("heavy") => Some(Tier::Heavy),
        Some(other) => {
            return Err(ApiError::bad_request(
                D,
                format!("unknown tier `{other}`: use fast, coder or heavy"),
            ))
        }
    };
    let snapshot = gateway.snapshot();
    let model = body.model.as_deref().unwrap_or(super::models::AUTO);
    let (analysis, decision) =
        match super::plan(&gateway, model, &mut request, &snapshot, D).await? {
            Plan::Route => gateway
                .engine
                .decide(&request, &snapshot)
                .map_err(|e| ApiError::from_engine(D, e, None))?,
            Plan::Pinned { analysis, decision } => (analysis, decision),
        };
    let value = engine::decision_json(None, &decision, &analysis, gateway.config());
    Ok(super::json_response(value, &Routed::of_decision(&decision)))
}
