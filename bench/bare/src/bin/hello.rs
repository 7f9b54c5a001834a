//! Benchmark baseline for the engine's `hello` example
//! (`actors/examples/hello.rs`): the same handler on actix-web's own
//! `HttpServer`, with 2 worker threads, on `127.0.0.1:$PORT` (default 8080).
//! `GET /?delay_ms=N` answers `hello` after N ms (default 2000).
//!
//! `rt::time::sleep` is `tokio::time::sleep`, re-exported by actix-rt; it is
//! named through actix-web so that this package needs no `tokio` dependency
//! of its own.

use std::time::Duration;

use actix_web::{rt as tokio, web, App, HttpServer};

#[derive(serde::Deserialize)]
struct Query {
    delay_ms: Option<u64>,
}

async fn hello(query: web::Query<Query>) -> &'static str {
    let delay = query.delay_ms.unwrap_or(2000);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    "hello"
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|e| std::io::Error::other(format!("PORT={p:?}: {e}")))?,
        Err(_) => 8080,
    };
    HttpServer::new(|| App::new().route("/", web::get().to(hello)))
        .workers(2)
        .bind(("127.0.0.1", port))?
        .run()
        .await
}
