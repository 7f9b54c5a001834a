//! Benchmark baseline: drainer's `POST /work` on bare actix-web + deadpool-postgres,
//! with no drain tracking, stock `HttpServer` (default workers, default signal handling),
//! and a `/readyz` that answers 200 while it runs.

use std::{error::Error, time::Duration};

use actix_web::{error, get, post, rt::time::sleep, web, App, HttpResponse, HttpServer};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::{Deserialize, Serialize};
use tokio_postgres::NoTls;
use uuid::Uuid;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS jobs (\
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), \
    name text NOT NULL, \
    created_at timestamptz NOT NULL DEFAULT now())";

#[derive(Deserialize)]
struct WorkRequest {
    name: String,
    latency_ms: Option<u64>,
}

#[derive(Serialize)]
struct Job {
    id: String,
    name: String,
}

#[post("/work")]
async fn work(
    pool: web::Data<Pool>,
    req: web::Json<WorkRequest>,
) -> actix_web::Result<HttpResponse> {
    let WorkRequest { name, latency_ms } = req.into_inner();
    if let Some(ms) = latency_ms.filter(|&ms| ms > 0) {
        sleep(Duration::from_millis(ms)).await;
    }
    let client = pool.get().await.map_err(error::ErrorServiceUnavailable)?;
    // A cached prepared statement, as drainer's DbActor uses: one round trip.
    let stmt = client
        .prepare_cached("INSERT INTO jobs (name) VALUES ($1) RETURNING id")
        .await
        .map_err(error::ErrorInternalServerError)?;
    let row = client
        .query_one(&stmt, &[&name])
        .await
        .map_err(error::ErrorInternalServerError)?;
    Ok(HttpResponse::Created().json(Job {
        id: row.get::<_, Uuid>(0).to_string(),
        name,
    }))
}

/// What a service without readiness of its own answers a load balancer's
/// health check: 200 while it runs (the rolling-restart proof checks it).
#[get("/readyz")]
async fn readyz() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let port: u16 = std::env::var("PORT").map_or(Ok(3000), |p| p.parse())?;
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL must be set")?;

    let manager = Manager::from_config(
        url.parse::<tokio_postgres::Config>()?,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager).max_size(16).build()?;
    pool.get().await?.batch_execute(SCHEMA).await?;

    let data = web::Data::new(pool);
    HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .service(work)
            .service(readyz)
    })
    .bind(("0.0.0.0", port))?
    .run()
    .await?;
    Ok(())
}
