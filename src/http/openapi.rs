//! The OpenAPI document of the JSON API, generated from the handlers' annotations by utoipa, so
//! the document and the router cannot drift apart: both come from [`api_router`].

use std::sync::OnceLock;

use axum::Json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{decisions, generations, history, observations, settings, stats, workloads};
use crate::app::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vramguard",
        description = "Admission sidecar for GPU generation pipelines: stats, settings, constraints, health and resource-check."
    ),
    tags(
        (name = "stats", description = "Resource readings"),
        (name = "settings", description = "Optimization settings and resource constraints"),
        (name = "policy", description = "Health and admission decisions"),
        (name = "leases", description = "Generation leases: atomic admission"),
    )
)]
struct ApiDoc;

/// The JSON API routes together with their OpenAPI description.
pub(crate) fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(stats::get_stats))
        .routes(routes!(history::get_history))
        .routes(routes!(history::save))
        .routes(routes!(settings::get_optimization, settings::post_optimization, settings::delete_optimization))
        .routes(routes!(settings::get_constraints, settings::post_constraints, settings::delete_constraints))
        .routes(routes!(decisions::get_health))
        .routes(routes!(decisions::resource_check))
        .routes(routes!(generations::acquire, generations::list))
        .routes(routes!(generations::queue))
        .routes(routes!(generations::heartbeat))
        .routes(routes!(generations::release))
        .routes(routes!(observations::list, observations::clear))
        .routes(routes!(workloads::list))
}

/// `GET /api/v1/openapi.json`: the document of the annotations, with the bounds only the
/// configuration knows written in: the workload profiles a request may name and the history's
/// retention.
pub(crate) async fn document(axum::extract::State(state): axum::extract::State<AppState>) -> Json<serde_json::Value> {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    let mut doc = DOC
        .get_or_init(|| serde_json::to_value(api_router().split_for_parts().1).expect("the document serialises"))
        .clone();
    configured(&mut doc, &state.config());
    Json(doc)
}

/// Writes the configuration's bounds into `doc`.
fn configured(doc: &mut serde_json::Value, config: &crate::config::Config) {
    use serde_json::{Value, json};
    let names: Vec<Value> = config.profile_names().into_iter().map(|n| json!(n)).collect();
    let retention_hours = config.history.retention.0.as_secs_f64() / 3600.0;
    let param = |doc: &mut Value, path: &str, name: &str, f: &dyn Fn(&mut Value)| {
        if let Some(params) = doc["paths"][path]["get"]["parameters"].as_array_mut() {
            params.iter_mut().filter(|p| p["name"] == json!(name)).for_each(|p| f(&mut p["schema"]));
        }
    };
    param(doc, "/api/v1/system/resource-check", "workload", &|s| s["enum"] = Value::Array(names.clone()));
    param(doc, "/api/v1/system/stats/history", "hours", &|s| s["maximum"] = json!(retention_hours));
    let workload = &mut doc["components"]["schemas"]["LeaseRequest"]["properties"]["workload"];
    if workload.is_object() {
        let mut allowed = names.clone();
        allowed.push(Value::Null);
        workload["enum"] = Value::Array(allowed);
    }
}
