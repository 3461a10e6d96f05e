//! The local HTTP endpoint: `/health`, `/ready`, `/metrics`, and `/tap`
//! (live copies of events, as JSON lines, for `tailrace tap`). This is the
//! only module that knows HTTP.
//!
//! It reads what the pipeline publishes (atomic counters, readiness flags)
//! and never takes a lock the pipeline waits on. Connections are bounded
//! by a semaphore; a client that does not finish its request headers in
//! time is disconnected.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tailrace_api::{Heartbeats, Metrics, Readiness, Shutdown, Side, TapHub, TapOptions};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoint reports on.
pub struct AdminState {
    pub metrics: Metrics,
    /// Each component's name ("source app", "sink kafka") and readiness;
    /// replaced when the config is reloaded.
    pub components: std::sync::RwLock<Vec<(String, Readiness)>>,
    /// Where `/tap` attaches; components take their taps from it.
    pub taps: TapHub,
    /// Where components register their heartbeats, for the watchdog.
    pub heartbeats: Heartbeats,
    /// `tailrace_component_ready{component}`, set from `components` at
    /// each scrape.
    ready: Family<Vec<(&'static str, String)>, Gauge>,
    started: Instant,
    uptime: Gauge<f64, std::sync::atomic::AtomicU64>,
    resident: Gauge,
    cpu: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl AdminState {
    /// Adds the process-level metrics (build info, uptime, memory, CPU) to
    /// the registry.
    pub fn new(mut metrics: Metrics, components: Vec<(String, Readiness)>) -> AdminState {
        let registry = metrics.registry_mut();
        let build: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
            .set(1);
        registry.register("tailrace_build_info", "The running version", build);
        let start: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        start.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch",
            start,
        );
        let uptime: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        registry.register(
            "tailrace_uptime_seconds",
            "Seconds since the agent started",
            uptime.clone(),
        );
        let resident: Gauge = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            resident.clone(),
        );
        let cpu: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
        registry.register(
            "process_cpu_seconds",
            "CPU time the process used, user and system",
            cpu.clone(),
        );
        let taps = TapHub::new();
        registry.register(
            "tailrace_tap_events_dropped",
            "Copies of events a tap could not take (rate bound or a full queue), per component; the events themselves went on",
            taps.dropped_family(),
        );
        let ready: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
        registry.register(
            "tailrace_component_ready",
            "1 when a component is ready (a sink has reached its broker), else 0",
            ready.clone(),
        );
        AdminState {
            metrics,
            components: std::sync::RwLock::new(components),
            taps,
            heartbeats: Heartbeats::new(),
            ready,
            started: Instant::now(),
            uptime,
            resident,
            cpu,
        }
    }

    /// The Prometheus text exposition.
    pub fn render_metrics(&self) -> String {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        if let Some((rss, cpu)) = process_usage() {
            self.resident.set(rss as i64);
            let seen = self.cpu.get();
            if cpu > seen {
                self.cpu.inc_by(cpu - seen);
            }
        }
        self.ready.clear();
        for (name, r) in self
            .components
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            self.ready
                .get_or_create(&vec![("component", name.clone())])
                .set(i64::from(r.is_ready()));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, self.metrics.registry());
        out
    }

    /// `None` when every component is ready, else what is not, and why.
    pub fn not_ready(&self) -> Vec<(String, String)> {
        self.components
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(name, r)| r.problem().map(|why| (name.clone(), why)))
            .collect()
    }
}

/// Resident bytes and CPU seconds, from /proc/self.
fn process_usage() -> Option<(u64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    Some((rss_pages * 4096, (utime + stime) / ticks))
}

/// Binds the endpoint's address; done before anything else starts, so a
/// port in use stops the agent at once.
pub async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = address
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid admin address {address:?}: {e}"))?;
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on admin address {addr}: {e} (set admin.address to a free port, or admin.enabled: false)")
    })
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: Shutdown) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(address = %addr, "admin endpoint listening (/health /ready /metrics)");
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.wait() => return,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "admin endpoint cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, req)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(peer = %peer, error = %e, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

type Body = BoxBody<Bytes, Infallible>;

fn respond(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/tap" && req.method() == Method::GET {
        return tap(state, req.uri().query().unwrap_or(""));
    }
    respond_text(state, req).map(BodyExt::boxed)
}

/// The JSON lines of a tap, as they come.
struct Lines(tokio::sync::mpsc::Receiver<String>);

impl hyper::body::Body for Lines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|line| {
            line.map(|mut l| {
                l.push('\n');
                Ok(Frame::data(Bytes::from(l)))
            })
        })
    }
}

/// Parses `source=NAME|sink=NAME&limit=N&sample=R&rate=N`.
pub fn tap_request(query: &str) -> Result<(Option<(Side, String)>, TapOptions), String> {
    let mut only = None;
    let mut options = TapOptions::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |what: &str| format!("{k}={v:?} is not {what}");
        match k {
            "source" | "sink" if only.is_some() => {
                return Err("give one of source= and sink=, once".into())
            }
            "source" => only = Some((Side::Source, v.to_string())),
            "sink" => only = Some((Side::Sink, v.to_string())),
            "limit" => options.limit = Some(v.parse().map_err(|_| number("a count"))?),
            "sample" => match v.parse::<f64>() {
                Ok(r) if r > 0.0 && r <= 1.0 => options.sample = r,
                _ => return Err(number("a rate in (0, 1]")),
            },
            "rate" => match v.parse::<u32>() {
                Ok(r) if r > 0 => options.events_per_second = r,
                _ => return Err(number("a positive number of events per second")),
            },
            _ => {
                return Err(format!(
                    "unknown parameter {k:?}: use source, sink, limit, sample, rate"
                ))
            }
        }
    }
    Ok((only, options))
}

fn tap(state: &AdminState, query: &str) -> Response<Body> {
    let attached = tap_request(query).and_then(|(only, options)| {
        state
            .taps
            .attach(only.as_ref().map(|(s, n)| (*s, n.as_str())), options)
            .map_err(|e| format!("not found: {e}"))
    });
    match attached {
        Ok(rx) => {
            info!(query, "tap attached");
            let mut r = Response::new(Lines(rx).boxed());
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            r
        }
        Err(e) => {
            let status = if e.starts_with("not found") {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            text(status, "text/plain; charset=utf-8", format!("{e}\n")).map(BodyExt::boxed)
        }
    }
}

fn respond_text(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/health" | "/ready" | "/metrics" | "/tap");
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /health, /ready, /metrics or /tap\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n",
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        // GET is served by `tap`; a HEAD has nothing to stream.
        "/tap" => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "only GET\n",
            );
            r.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
            r
        }
        "/health" => text(StatusCode::OK, "application/json", "{\"status\":\"ok\"}\n"),
        "/ready" => {
            let problems = state.not_ready();
            if problems.is_empty() {
                text(
                    StatusCode::OK,
                    "application/json",
                    "{\"status\":\"ready\"}\n",
                )
            } else {
                let components: Vec<_> = problems
                    .into_iter()
                    .map(|(component, reason)| serde_json::json!({"component": component, "reason": reason}))
                    .collect();
                let body = serde_json::json!({"status": "not_ready", "components": components});
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    format!("{body}\n"),
                )
            }
        }
        _ => {
            let wants_openmetrics = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .any(|v| {
                    v.to_str()
                        .is_ok_and(|v| v.contains("application/openmetrics-text"))
                });
            let body = state.render_metrics();
            if wants_openmetrics {
                text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                )
            } else {
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    classic(&body),
                )
            }
        }
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition, for
/// clients that do not ask for OpenMetrics (promtool, curl, older
/// scrapers). The two differ, for what prometheus-client writes, only in
/// how counter families are named in HELP and TYPE, and in the `# UNIT`
/// and `# EOF` lines.
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{kind}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_the_required_names() {
        let mut metrics = Metrics::new();
        crate::registry::declare_metrics(&mut metrics);
        // A plugin's own families land in the one registry.
        let _ = tailrace_file::FileMetrics::of("app", &metrics.source("app"));
        tailrace_kafka::TopicDurability::of("kafka", &metrics.sink("kafka")).set("logs", 3, 2);
        let _ = metrics.channel("main");
        metrics.channel_capacity("main", Some(100), 1000);
        let state = AdminState::new(metrics, vec![("sink kafka".into(), Readiness::ready())]);
        let out = state.render_metrics();
        for name in [
            "tailrace_source_events_total{source=\"app\"}",
            "tailrace_sink_events_delivered_total{sink=\"kafka\"}",
            "tailrace_spool_events{sink=\"kafka\"}",
            "tailrace_spool_bytes{sink=\"kafka\"}",
            "tailrace_channel_events{channel=\"main\"}",
            "tailrace_delivery_latency_seconds_bucket",
            "tailrace_build_info{version=",
            "tailrace_file_events_total{source=\"app\",event=\"rotated\"} 0",
            "tailrace_sink_topic_replication_factor{sink=\"kafka\",topic=\"logs\"} 3",
            "tailrace_sink_topic_min_insync_replicas{sink=\"kafka\",topic=\"logs\"} 2",
            "tailrace_channel_capacity_events{channel=\"main\"} 100",
            "tailrace_channel_capacity_bytes{channel=\"main\"} 1000",
            "tailrace_component_ready{component=\"sink kafka\"} 1",
            "tailrace_uptime_seconds",
            "process_resident_memory_bytes",
        ] {
            assert!(out.contains(name), "{name} missing from:\n{out}");
        }
    }

    #[test]
    fn tap_requests() {
        let ok = |q: &str| tap_request(q).unwrap();
        assert_eq!(ok(""), (None, TapOptions::default()));
        let (only, o) = ok("sink=kafka&limit=5&sample=0.5&rate=100");
        assert_eq!(only, Some((Side::Sink, "kafka".to_string())));
        assert_eq!(
            (o.limit, o.sample, o.events_per_second),
            (Some(5), 0.5, 100)
        );
        for bad in [
            "source=a&sink=b",
            "sample=0",
            "sample=2",
            "rate=0",
            "limit=x",
            "nope=1",
        ] {
            assert!(tap_request(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn classic_format_names_counters_with_total() {
        let om = "# HELP a_events Events.\n# TYPE a_events counter\na_events_total{x=\"1\"} 3\n# HELP g Gauge.\n# TYPE g gauge\n# UNIT g seconds\ng 1\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP a_events_total Events.\n# TYPE a_events_total counter\na_events_total{x=\"1\"} 3\n# HELP g Gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn readiness_lists_what_is_not_ready() {
        let sink = Readiness::not_ready("connecting");
        let state = AdminState::new(
            Metrics::new(),
            vec![
                ("source app".into(), Readiness::ready()),
                ("sink kafka".into(), sink.clone()),
            ],
        );
        assert_eq!(
            state.not_ready(),
            vec![("sink kafka".to_string(), "connecting".to_string())]
        );
        sink.set_ready();
        assert!(state.not_ready().is_empty());
    }
}
