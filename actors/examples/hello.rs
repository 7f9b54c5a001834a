//! The first exercise of the graceful-shutdown guide: `curl` gets `hello`;
//! Ctrl+C; the server exits cleanly. `GET /?delay_ms=N` answers after N ms
//! (default 2000) on `PORT` (default 8080), with `WORKERS` and the shutdown
//! settings (`SHUTDOWN_DELAY_MS`, `DRAIN_TIMEOUT_MS`, …) from the environment.
use std::time::Duration;

use actix_web::{web, App};
use drainer_engine::{Server, ShutdownSettings, StartError};

#[derive(serde::Deserialize)]
struct Query {
    delay_ms: Option<u64>,
}

async fn hello(query: web::Query<Query>) -> &'static str {
    let delay = query.delay_ms.unwrap_or(2000);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    "hello"
}

fn env(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    drainer_engine::main(|signals| async move {
        let settings = ShutdownSettings::from_env().map_err(|e| e.to_string())?;
        let port = env("PORT").unwrap_or(8080) as u16;
        let server = Server::new(|| App::new().route("/", web::get().to(hello)))
            .shutdown(settings)
            .workers(env("WORKERS").unwrap_or(2))
            .with_engine(|engine| {
                engine.signals(signals);
            })
            .bind(("0.0.0.0", port))
            .map_err(|e: StartError| e.to_string())?;
        server.run().await.map_err(|e| e.to_string())
    })
}
