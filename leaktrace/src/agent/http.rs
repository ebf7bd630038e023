//! The agent's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`,
//! `/debug/targets` and `/debug/pprof/leaks`. A small HTTP/1.1 server, GET
//! only, one request per connection: every request is bounded in size, time
//! and number, and answered from the latest snapshot (it never waits for the
//! kernel side).
use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use super::{Shared, metrics};
use crate::pprof::{self, Shape};

/// A request's head, at most: the endpoints take no body.
const MAX_REQUEST: usize = 8 << 10;
/// Connections answered at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// A client that sends or reads too slowly is dropped.
const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::debug!("accept: {e}");
                // Out of descriptors, say: not a busy loop.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TIMEOUT, answer(stream, &shared)).await;
            drop(permit);
        });
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

async fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST {
            return respond(
                &mut stream,
                Response::text(431, "request too large\n"),
                false,
            )
            .await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head_only = method == "HEAD";
    let response = if method != "GET" && !head_only {
        Response::text(405, "only GET\n")
    } else {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let head = String::from_utf8_lossy(&head);
        let openmetrics = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("accept:") && l.contains("application/openmetrics-text")
        });
        route(path, query, openmetrics, shared)
    };
    respond(&mut stream, response, head_only).await
}

fn route(path: &str, query: &str, openmetrics: bool, shared: &Shared) -> Response {
    let view = shared.view();
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: if openmetrics {
                metrics::OPENMETRICS
            } else {
                metrics::TEXT
            },
            body: metrics::render(view.report.as_deref(), &shared.health(&view), openmetrics)
                .into_bytes(),
        },
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => match view.ready {
            true => Response::text(200, "ready\n"),
            false => Response::text(
                503,
                "not ready: programs loading or first discovery running\n",
            ),
        },
        "/debug/targets" => Response {
            status: 200,
            content_type: "application/json",
            body: serde_json::to_vec_pretty(&view.decisions.to_json()).unwrap_or_default(),
        },
        "/debug/pprof/leaks" => pprof_of(query, &view),
        "/" => Response::text(
            200,
            "leaktrace agent: /metrics /healthz /readyz /debug/targets /debug/pprof/leaks?pid=PID\n",
        ),
        _ => Response::text(404, "not found\n"),
    }
}

/// The latest report as a pprof profile: of one target (`pid=PID`), or of all.
fn pprof_of(query: &str, view: &super::View) -> Response {
    let Some(report) = &view.report else {
        return Response::text(503, "no report yet\n");
    };
    let pid = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("pid="))
        .map(|p| p.parse::<u32>());
    let report = match pid {
        None => (**report).clone(),
        Some(Ok(pid)) if report.targets.iter().any(|t| t.pid == pid && !t.exited) => {
            report.of_process(pid)
        }
        Some(Ok(pid)) => return Response::text(404, format!("PID {pid} is not traced\n")),
        Some(Err(_)) => return Response::text(400, "pid= takes a process id\n"),
    };
    match pprof::gzip(&prost::Message::encode_to_vec(&pprof::build(
        &report,
        super::wall_ns(),
        Shape::FILE,
    ))) {
        Ok(body) => Response {
            status: 200,
            content_type: "application/octet-stream",
            body,
        },
        Err(e) => Response::text(500, format!("{e}\n")),
    }
}

async fn respond(stream: &mut TcpStream, r: Response, head_only: bool) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(&r.body).await?;
    }
    stream.shutdown().await
}
