//! `triggerfish display`: a subscriber that prints every CloudEvent it receives (like
//! Knative's event-display), for the quickstart and for debugging triggers.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use broker::event::{http as binding, json};

/// Serves until Ctrl-C, printing each event as structured JSON on one line.
pub async fn run(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let app =
        axum::Router::new().fallback(|uri: Uri, headers: HeaderMap, body: Bytes| async move {
            match binding::decode(&headers, body) {
                Ok(events) => {
                    // Best-effort: a closed stdout (`| head`) must not panic the server.
                    let mut out = std::io::stdout().lock();
                    for e in events {
                        let _ = writeln!(
                            out,
                            "{} {}",
                            uri.path(),
                            String::from_utf8_lossy(&json::to_vec(&e))
                        );
                    }
                    StatusCode::ACCEPTED
                }
                Err(e) => {
                    eprintln!("{} not a CloudEvent: {e}", uri.path());
                    StatusCode::BAD_REQUEST
                }
            }
        });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!(
        "displaying events received on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
