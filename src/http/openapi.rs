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

/// `GET /api/v1/openapi.json`.
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    Json(DOC.get_or_init(|| api_router().split_for_parts().1).clone())
}
