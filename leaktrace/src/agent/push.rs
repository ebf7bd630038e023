//! Pushes pprof profiles to Grafana Pyroscope through its Connect API
//! (`POST {url}/push.v1.PusherService/Push`, a gzipped protobuf `PushRequest`).
//!
//! The profiler must never wait on the network: [`Pusher::send`] only queues, and one
//! thread delivers oldest first, retrying what may succeed later and dropping the rest.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::write::GzEncoder;
use ureq::http::{HeaderValue, Response, Uri};
use ureq::{Agent, Body};

/// Appended to the configured URL (Connect maps `package.Service/Method` to this path).
const PUSH_PATH: &str = "/push.v1.PusherService/Push";
/// Parca's `ProfileStoreService/WriteRaw` through its HTTP/JSON gateway
/// (gRPC needs HTTP/2, which the client here does not speak).
const PARCA_PATH: &str = "/api/profiles/writeraw";

/// Which profile store a pusher speaks to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wire {
    /// Grafana Pyroscope: Connect, protobuf `PushRequest`, gzipped.
    #[default]
    Pyroscope,
    /// Parca: `WriteRawRequest` as JSON (profiles in base64).
    Parca,
}

impl Wire {
    /// Its name in logs and in the `endpoint` label.
    pub fn name(self) -> &'static str {
        match self {
            Wire::Pyroscope => "pyroscope",
            Wire::Parca => "parca",
        }
    }
}
/// Pyroscope's default `max_label_names_per_series`.
const MAX_LABELS: usize = 30;
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How long `shutdown` and `Drop` wait past the deadline for a request already on the wire.
const GRACE: Duration = Duration::from_millis(250);
/// Bytes of a rejection's response body kept for the log.
const SNIPPET: u64 = 200;
const NAME_LABEL: &str = "__name__";
const SERVICE_LABEL: &str = "service_name";

// Wire messages: api/push/v1/push.proto and api/types/v1/types.proto of grafana/pyroscope.

#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub series: Vec<RawProfileSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RawProfileSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<RawSample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RawSample {
    #[prost(bytes = "vec", tag = "1")]
    pub raw_profile: Vec<u8>,
    /// A random UUID: Pyroscope's `ID` field.
    #[prost(string, tag = "2")]
    pub id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("push URL {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("push {what} contains characters that an HTTP header cannot carry")]
    Header { what: &'static str },
    #[error("push {what} must be greater than zero")]
    Zero { what: &'static str },
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum LabelError {
    #[error("label {0:?} is missing or empty: Pyroscope requires it")]
    Missing(&'static str),
    #[error("{0} labels: Pyroscope accepts at most {MAX_LABELS} per series")]
    TooMany(usize),
    #[error("label name {0:?} is given twice (after replacing characters outside [a-zA-Z0-9_])")]
    Duplicate(String),
    #[error("a label has an empty name")]
    EmptyName,
    #[error("__name__ {0:?} is not a metric name: use letters, digits, '_' and ':'")]
    MetricName(String),
}

#[derive(Clone)]
pub enum Auth {
    Basic { user: String, password: String },
    Bearer(String),
}

// Hand-written so that secrets never reach a log through `{:?}`.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Basic { user, .. } => write!(f, "Basic {{ user: {user:?}, password: <hidden> }}"),
            Auth::Bearer(_) => f.write_str("Bearer(<hidden>)"),
        }
    }
}

impl Auth {
    fn header(&self) -> String {
        match self {
            Auth::Basic { user, password } => {
                format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
            }
            Auth::Bearer(token) => format!("Bearer {token}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PushConfig {
    /// Base URL of Pyroscope (or of a proxy in front of it, path prefix allowed).
    pub url: String,
    /// Sent as `X-Scope-OrgID` (multi-tenant Pyroscope, Grafana Cloud).
    pub tenant: Option<String>,
    pub auth: Option<Auth>,
    /// Pushes waiting to be sent; past this the oldest is dropped.
    pub queue: usize,
    /// A push still unsent this long after it was made is dropped.
    pub max_age: Duration,
    /// Whole request: connect, send, response.
    pub timeout: Duration,
    /// 429 means over a rate limit; retrying adds load, so it is a choice.
    pub retry_429: bool,
    /// First retry delay, doubled per failure up to 30 s.
    pub backoff_base: Duration,
    pub wire: Wire,
}

impl PushConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tenant: None,
            auth: None,
            queue: 64,
            max_age: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            retry_429: false,
            backoff_base: Duration::from_secs(1),
            wire: Wire::Pyroscope,
        }
    }

    /// Checks what a user typed before anything is sent, and drops one trailing `/`
    /// from the URL so that the push path can be appended.
    pub fn check(&mut self) -> Result<(), ConfigError> {
        let bad = |reason| ConfigError::Url {
            url: self.url.clone(),
            reason,
        };
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(bad("must start with http:// or https://"));
        }
        let uri: Uri = self
            .url
            .parse()
            .map_err(|_| bad("is not a valid URL (spaces or stray characters?)"))?;
        let Some(authority) = uri.authority() else {
            return Err(bad("has no host"));
        };
        if authority.host().is_empty() {
            return Err(bad("has no host"));
        }
        if authority.as_str().contains('@') {
            return Err(bad("holds credentials: give them as push auth instead"));
        }
        let port = authority.as_str().rsplit_once(':').map(|(_, p)| p);
        if port.is_some_and(|p| !p.ends_with(']') && !p.parse::<u16>().is_ok_and(|n| n > 0)) {
            return Err(bad("has a bad port: use a number from 1 to 65535"));
        }
        // The push path is appended, so anything after the path would swallow it.
        if uri.query().is_some() || self.url.contains('#') {
            return Err(bad(
                "has a query or fragment: give only the server's base URL",
            ));
        }
        if let Some(stripped) = self.url.strip_suffix('/') {
            self.url.truncate(stripped.len());
        }
        if let Some(tenant) = &self.tenant
            && HeaderValue::try_from(tenant.as_str()).is_err()
        {
            return Err(ConfigError::Header { what: "tenant" });
        }
        if let Some(auth) = &self.auth
            && HeaderValue::try_from(auth.header()).is_err()
        {
            return Err(ConfigError::Header {
                what: "credentials",
            });
        }
        for (what, value) in [
            ("queue", self.queue as u128),
            ("max age", self.max_age.as_nanos()),
            ("timeout", self.timeout.as_nanos()),
            // Zero would retry in a tight loop against a failing server.
            ("backoff", self.backoff_base.as_nanos()),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { what });
            }
        }
        Ok(())
    }
}

/// Profiles to push in one request, with their labels already checked.
pub struct Push {
    series: Vec<RawProfileSeries>,
    created: Instant,
}

impl Push {
    /// One series per `(labels, pprof bytes)`; see [`labels`] for what labels must hold.
    pub fn new(
        series: impl IntoIterator<Item = (Vec<(String, String)>, Vec<u8>)>,
    ) -> Result<Self, LabelError> {
        let series = series
            .into_iter()
            .map(|(raw, profile)| {
                Ok(RawProfileSeries {
                    labels: labels(raw)?,
                    samples: vec![RawSample {
                        raw_profile: profile,
                        id: uuid_v4(),
                    }],
                })
            })
            .collect::<Result<_, LabelError>>()?;
        Ok(Self {
            series,
            created: Instant::now(),
        })
    }
}

/// Turns labels into what Pyroscope accepts: names made of `[a-zA-Z_][a-zA-Z0-9_]*`
/// (other characters become `_`), sorted by name, unique, with `__name__` and
/// `service_name` set, at most 30.
pub fn labels(raw: Vec<(String, String)>) -> Result<Vec<LabelPair>, LabelError> {
    if raw.len() > MAX_LABELS {
        return Err(LabelError::TooMany(raw.len()));
    }
    let mut pairs = raw
        .into_iter()
        .map(|(name, value)| {
            Ok(LabelPair {
                name: label_name(name)?,
                value,
            })
        })
        .collect::<Result<Vec<_>, LabelError>>()?;
    pairs.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(twice) = pairs.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(LabelError::Duplicate(twice[0].name.clone()));
    }
    let value = |name: &'static str| {
        pairs
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.as_str())
            .filter(|v| !v.is_empty())
            .ok_or(LabelError::Missing(name))
    };
    value(SERVICE_LABEL)?;
    let metric = value(NAME_LABEL)?;
    let metric_char = |(i, c): (usize, char)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    };
    if !metric.chars().enumerate().all(metric_char) {
        return Err(LabelError::MetricName(metric.to_owned()));
    }
    Ok(pairs)
}

fn label_name(name: String) -> Result<String, LabelError> {
    let ok = |(i, c): (usize, char)| {
        c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit())
    };
    if name.is_empty() {
        return Err(LabelError::EmptyName);
    }
    if name.chars().enumerate().all(ok) {
        return Ok(name);
    }
    Ok(name
        .chars()
        .enumerate()
        .map(|(i, c)| if ok((i, c)) { c } else { '_' })
        .collect())
}

/// A snapshot of the counters; each counts pushes (requests), not series.
#[derive(Clone, Debug, Default)]
pub struct PushStats {
    pub sent_ok: u64,
    /// Failed attempts that will be tried again.
    pub retries: u64,
    /// Attempts that got no HTTP answer: refused, timed out, DNS, TLS.
    pub failed_transport: u64,
    /// Attempts answered with a retryable status: 5xx, 408, and 429 when retried.
    pub failed_5xx: u64,
    /// Pushes dropped on a status that retrying won't change (4xx, 3xx).
    pub rejected: u64,
    /// Pushes dropped because they were older than `max_age` before they got through.
    pub expired: u64,
    pub dropped_queue_full: u64,
    /// Waiting in the queue now (not counting the one being sent).
    pub queued: usize,
    /// Request bodies (gzipped) that were accepted.
    pub bytes_sent: u64,
    pub last_error: Option<String>,
    pub last_success_unix: Option<u64>,
}

#[derive(Default)]
struct Counters {
    sent_ok: AtomicU64,
    retries: AtomicU64,
    failed_transport: AtomicU64,
    failed_5xx: AtomicU64,
    rejected: AtomicU64,
    expired: AtomicU64,
    dropped_queue_full: AtomicU64,
    bytes_sent: AtomicU64,
    /// 0 until the first success.
    last_success_unix: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Release, paired with the Acquire loads in `stats`, so that a reader who sees a count
/// also sees what was stored before it (bytes, last success).
fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Release);
}

#[derive(Default)]
struct State {
    queue: VecDeque<Push>,
    /// Set by shutdown or drop: from then on one attempt per push, none after this instant.
    stop_at: Option<Instant>,
    in_flight: bool,
    /// Pushes given up because of shutdown.
    unsent: usize,
    finished: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the worker (new push, stop) and the stopper (worker finished).
    wake: Condvar,
    counters: Counters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the queue is still sound.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_error(&self, error: String) {
        let mut short: String = error.chars().take(200).collect();
        short.retain(|c| c != '\n' && c != '\r');
        *self
            .counters
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(short);
    }
}

/// Sends pushes from a background thread; see the module comment.
pub struct Pusher {
    shared: Arc<Shared>,
    capacity: usize,
    worker: Option<JoinHandle<()>>,
}

impl Pusher {
    /// Starts the `leaktrace-push` thread. Call [`PushConfig::check`] first.
    pub fn start(config: PushConfig) -> io::Result<Pusher> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            counters: Counters::default(),
        });
        let agent: Agent = Agent::config_builder()
            // Statuses are classified here; as errors ureq would hide the body.
            .http_status_as_error(false)
            // A redirect would lose the body and the credentials: report it instead.
            .max_redirects(0)
            .user_agent(format!("leaktrace/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let (mut headers, path) = match config.wire {
            Wire::Pyroscope => (
                vec![
                    ("Content-Type", "application/proto".to_owned()),
                    ("Content-Encoding", "gzip".to_owned()),
                    ("Connect-Protocol-Version", "1".to_owned()),
                ],
                PUSH_PATH,
            ),
            Wire::Parca => (
                vec![("Content-Type", "application/json".to_owned())],
                PARCA_PATH,
            ),
        };
        if let Some(tenant) = &config.tenant {
            headers.push(("X-Scope-OrgID", tenant.clone()));
        }
        if let Some(auth) = &config.auth {
            headers.push(("Authorization", auth.header()));
        }
        let worker = Worker {
            shared: Arc::clone(&shared),
            agent,
            endpoint: format!("{}{path}", config.url),
            wire: config.wire,
            headers,
            timeout: config.timeout,
            max_age: config.max_age,
            retry_429: config.retry_429,
            backoff_base: config.backoff_base,
            failing: false,
        };
        let handle = thread::Builder::new()
            .name("leaktrace-push".to_owned())
            .spawn(move || worker.run())?;
        Ok(Pusher {
            shared,
            capacity: config.queue.max(1),
            worker: Some(handle),
        })
    }

    /// Queues a push and returns at once; when the queue is full the oldest is dropped.
    pub fn send(&self, push: Push) {
        let mut state = self.shared.lock();
        if state.queue.len() >= self.capacity {
            state.queue.pop_front();
            bump(&self.shared.counters.dropped_queue_full);
            log::debug!("push queue full: dropped the oldest profile");
        }
        state.queue.push_back(push);
        drop(state);
        self.shared.wake.notify_all();
    }

    pub fn stats(&self) -> PushStats {
        self.watch().stats()
    }

    /// A handle that reads the counters after the pusher is gone.
    pub fn watch(&self) -> Watch {
        Watch(Arc::clone(&self.shared))
    }

    /// Stops accepting, gives every queued push one attempt until `deadline` has passed,
    /// and returns how many pushes were left unsent.
    pub fn shutdown(mut self, deadline: Duration) -> usize {
        self.stop(deadline)
    }

    fn stop(&mut self, deadline: Duration) -> usize {
        let Some(handle) = self.worker.take() else {
            return 0;
        };
        let stop_at = Instant::now() + deadline;
        let mut state = self.shared.lock();
        state.stop_at = Some(stop_at);
        self.shared.wake.notify_all();
        // The worker keeps its requests within the deadline; GRACE covers one started
        // before the stop, after which it is left behind rather than hang the caller.
        let wait = (stop_at + GRACE).saturating_duration_since(Instant::now());
        state = self
            .shared
            .wake
            .wait_timeout_while(state, wait, |s| !s.finished)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        let left = state.unsent + state.queue.len() + usize::from(state.in_flight);
        let finished = state.finished;
        drop(state);
        if finished {
            // It has returned; join only collects it.
            let _ = handle.join();
        } else {
            log::warn!("push thread still busy at shutdown: left behind");
        }
        left
    }
}

/// Reads a pusher's counters (the metrics), owning none of it.
#[derive(Clone)]
pub struct Watch(Arc<Shared>);

impl Watch {
    pub fn stats(&self) -> PushStats {
        let c = &self.0.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Acquire);
        PushStats {
            sent_ok: get(&c.sent_ok),
            retries: get(&c.retries),
            failed_transport: get(&c.failed_transport),
            failed_5xx: get(&c.failed_5xx),
            rejected: get(&c.rejected),
            expired: get(&c.expired),
            dropped_queue_full: get(&c.dropped_queue_full),
            queued: self.0.lock().queue.len(),
            bytes_sent: get(&c.bytes_sent),
            last_error: c
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            last_success_unix: Some(get(&c.last_success_unix)).filter(|&t| t != 0),
        }
    }
}

impl Drop for Pusher {
    /// A pusher dropped without `shutdown` abandons its queue at once.
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

enum Outcome {
    Sent,
    Retry,
    Rejected,
}

struct Worker {
    shared: Arc<Shared>,
    agent: Agent,
    endpoint: String,
    wire: Wire,
    headers: Vec<(&'static str, String)>,
    timeout: Duration,
    max_age: Duration,
    retry_429: bool,
    backoff_base: Duration,
    /// Failing since the last success: only the first failure of a run is logged loud.
    failing: bool,
}

impl Worker {
    fn run(mut self) {
        while let Some(push) = self.next() {
            let body = encode(self.wire, push.series);
            let unsent = self.deliver(push.created, &body);
            let mut state = self.shared.lock();
            state.in_flight = false;
            state.unsent += usize::from(unsent);
        }
        let mut state = self.shared.lock();
        state.unsent += state.queue.len();
        state.queue.clear();
        state.finished = true;
        drop(state);
        self.shared.wake.notify_all();
    }

    /// The oldest queued push, or None once stopped and drained or past the deadline.
    fn next(&self) -> Option<Push> {
        let mut state = self.shared.lock();
        loop {
            if state.stop_at.is_some_and(|at| Instant::now() >= at) {
                return None;
            }
            if let Some(push) = state.queue.pop_front() {
                state.in_flight = true;
                return Some(push);
            }
            if state.stop_at.is_some() {
                return None;
            }
            state = self
                .shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Tries until sent, rejected or expired; true if shutdown left it unsent.
    fn deliver(&mut self, created: Instant, body: &[u8]) -> bool {
        let shared = Arc::clone(&self.shared);
        let max_age = self.max_age;
        let expire = || {
            bump(&shared.counters.expired);
            log::warn!("push: dropped a profile still unsent after {max_age:?}");
        };
        let mut failures = 0;
        loop {
            let now = Instant::now();
            if now.duration_since(created) >= self.max_age {
                expire();
                return false;
            }
            let stop_at = shared.lock().stop_at;
            let timeout = match stop_at {
                Some(at) if at <= now => return true,
                Some(at) => self.timeout.min(at - now),
                None => self.timeout,
            };
            match self.attempt(body, timeout) {
                Outcome::Sent | Outcome::Rejected => return false,
                Outcome::Retry => {}
            }
            if shared.lock().stop_at.is_some() {
                return true;
            }
            failures += 1;
            let delay = backoff(self.backoff_base, failures);
            if created + self.max_age <= Instant::now() + delay {
                expire();
                return false;
            }
            bump(&shared.counters.retries);
            let state = shared.lock();
            // New pushes notify too; only a stop ends the wait early.
            let _ = shared
                .wake
                .wait_timeout_while(state, delay, |s| s.stop_at.is_none())
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn attempt(&mut self, body: &[u8], timeout: Duration) -> Outcome {
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        let mut request = self.agent.post(&self.endpoint);
        for (name, value) in &self.headers {
            request = request.header(*name, value);
        }
        let result = request
            .config()
            .timeout_global(Some(timeout))
            .build()
            .send(body);
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                self.failed(format!("{error}"));
                bump(&counters.failed_transport);
                return Outcome::Retry;
            }
        };
        let status = response.status().as_u16();
        // Each branch bumps its count last: whoever sees the count sees the rest.
        match classify(status, self.retry_429) {
            Outcome::Sent => {
                // Read to the end so that the connection can be reused.
                let _ = io::copy(
                    &mut response.body_mut().as_reader().take(1 << 16),
                    &mut io::sink(),
                );
                counters
                    .bytes_sent
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                counters.last_success_unix.store(unix, Ordering::Relaxed);
                if self.failing {
                    log::info!("{} push works again", self.wire.name());
                    self.failing = false;
                }
                bump(&counters.sent_ok);
                Outcome::Sent
            }
            Outcome::Retry => {
                self.failed(format!("HTTP {status}: {}", snippet(&mut response)));
                bump(&counters.failed_5xx);
                Outcome::Retry
            }
            Outcome::Rejected => {
                let error = format!("HTTP {status}: {}", snippet(&mut response));
                log::warn!("{} rejected a push, dropped: {error}", self.wire.name());
                shared.set_error(error);
                bump(&counters.rejected);
                Outcome::Rejected
            }
        }
    }

    fn failed(&mut self, error: String) {
        if self.failing {
            log::debug!("{} push failed, will retry: {error}", self.wire.name());
        } else {
            log::warn!("{} push failed, will retry: {error}", self.wire.name());
            self.failing = true;
        }
        self.shared.set_error(error);
    }
}

fn classify(status: u16, retry_429: bool) -> Outcome {
    match status {
        200..=299 => Outcome::Sent,
        408 | 500..=599 => Outcome::Retry,
        429 if retry_429 => Outcome::Retry,
        _ => Outcome::Rejected,
    }
}

/// The start of a response body, escaped onto one line for a log.
fn snippet(response: &mut Response<Body>) -> String {
    let mut bytes = Vec::new();
    // Best effort: the status already decided what happens to the push.
    let _ = response
        .body_mut()
        .as_reader()
        .take(SNIPPET)
        .read_to_end(&mut bytes);
    bytes
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}

fn encode(wire: Wire, series: Vec<RawProfileSeries>) -> Vec<u8> {
    if wire == Wire::Parca {
        return parca_json(&series);
    }
    let proto = prost::Message::encode_to_vec(&PushRequest { series });
    let mut gz = GzEncoder::new(Vec::with_capacity(proto.len() / 2), Compression::default());
    gz.write_all(&proto)
        .and_then(|()| gz.finish())
        .expect("gzip into a Vec cannot fail")
}

/// `WriteRawRequest{series = 2; normalized = 3}` in the gateway's JSON
/// (proto3 names; bytes as base64): `RawProfileSeries{LabelSet labels = 1;
/// repeated RawSample samples = 2}`, `RawSample{bytes raw_profile = 1}`.
fn parca_json(series: &[RawProfileSeries]) -> Vec<u8> {
    let series: Vec<serde_json::Value> = series
        .iter()
        .map(|s| {
            let labels: Vec<serde_json::Value> = s
                .labels
                .iter()
                .map(|l| serde_json::json!({ "name": l.name, "value": l.value }))
                .collect();
            let samples: Vec<serde_json::Value> = s
                .samples
                .iter()
                .map(|r| serde_json::json!({ "rawProfile": base64(&r.raw_profile) }))
                .collect();
            serde_json::json!({ "labels": { "labels": labels }, "samples": samples })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "series": series, "normalized": false }))
        .unwrap_or_default()
}

/// base × 2^(failures-1), at most 30 s, then ±20 % so that agents restarted together
/// don't retry together.
fn backoff(base: Duration, failures: u32) -> Duration {
    let exp = base
        .saturating_mul(1 << (failures.saturating_sub(1)).min(16))
        .min(BACKOFF_CAP);
    let r = u64::from_le_bytes(random_bytes()) as f64 / u64::MAX as f64;
    exp.mul_f64(0.8 + 0.4 * r)
}

fn uuid_v4() -> String {
    let mut b: [u8; 16] = random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{byte:02x}"));
    }
    s
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // Seccomp filters may forbid getrandom; std's randomly keyed hasher still
            // gives IDs that differ and jitter that spreads.
            for chunk in buf[filled..].chunks_mut(8) {
                let r = RandomState::new().hash_one(SystemTime::now()).to_le_bytes();
                chunk.copy_from_slice(&r[..chunk.len()]);
            }
            break;
        }
    }
    buf
}

fn base64(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use prost::Message;
    use std::io::{BufRead, BufReader};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    struct Seen {
        request_line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn decode(&self) -> PushRequest {
            let mut proto = Vec::new();
            GzDecoder::new(&self.body[..])
                .read_to_end(&mut proto)
                .expect("body is gzip");
            PushRequest::decode(&proto[..]).expect("body is a PushRequest")
        }
    }

    /// An HTTP/1.1 server answering one connection per scripted status, in order, then
    /// closing (later connections are refused). Each request is handed to the test as it
    /// arrives; with `hold`, the first answer waits until the test sends on it.
    fn server(
        statuses: Vec<(u16, &'static str)>,
        hold: Option<mpsc::Receiver<()>>,
    ) -> (String, mpsc::Receiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for (i, (status, body)) in statuses.into_iter().enumerate() {
                let (mut stream, _) = listener.accept().unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let seen = read_request(&stream);
                tx.send(seen).unwrap();
                if let (0, Some(hold)) = (i, &hold) {
                    hold.recv().unwrap();
                }
                write!(
                    stream,
                    "HTTP/1.1 {status} Scripted\r\nContent-Type: text/plain\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        (url, rx)
    }

    fn read_request(stream: &TcpStream) -> Seen {
        let mut reader = BufReader::new(stream);
        let mut line = || {
            let mut l = String::new();
            reader.read_line(&mut l).unwrap();
            l.trim_end_matches("\r\n").to_owned()
        };
        let request_line = line();
        let mut headers = Vec::new();
        loop {
            let l = line();
            if l.is_empty() {
                break;
            }
            let (name, value) = l.split_once(':').unwrap();
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let mut seen = Seen {
            request_line,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = seen.header("content-length") {
            seen.body = vec![0; len.parse().unwrap()];
            reader.read_exact(&mut seen.body).unwrap();
        } else if seen
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).unwrap();
                let size = size.trim_end().split(';').next().unwrap();
                let size = usize::from_str_radix(size, 16).unwrap();
                let mut chunk = vec![0; size + 2]; // data and its CRLF
                reader.read_exact(&mut chunk).unwrap();
                if size == 0 {
                    break; // no trailers are sent
                }
                seen.body.extend_from_slice(&chunk[..size]);
            }
        }
        seen
    }

    fn config(url: &str) -> PushConfig {
        let mut config = PushConfig::new(url);
        config.timeout = Duration::from_secs(2);
        config.backoff_base = Duration::from_millis(20);
        config.check().unwrap();
        config
    }

    fn push(tag: &str) -> Push {
        let labels = vec![
            ("service_name".to_owned(), "svc".to_owned()),
            ("__name__".to_owned(), "memory".to_owned()),
        ];
        Push::new([(labels, tag.as_bytes().to_vec())]).unwrap()
    }

    fn profile_of(seen: &Seen) -> Vec<u8> {
        seen.decode().series[0].samples[0].raw_profile.clone()
    }

    fn wait_until(pusher: &Pusher, what: &str, done: impl Fn(&PushStats) -> bool) -> PushStats {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let stats = pusher.stats();
            if done(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}: {stats:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    const WAIT: Duration = Duration::from_secs(2);

    #[test]
    fn round_trip() {
        let (url, seen) = server(vec![(200, "{}")], None);
        let mut config = config(&format!("{url}/"));
        config.tenant = Some("team-a".to_owned());
        config.auth = Some(Auth::Basic {
            user: "user".to_owned(),
            password: "pass".to_owned(),
        });
        let pusher = Pusher::start(config).unwrap();
        let labels = vec![
            ("service_name".to_owned(), "svc".to_owned()),
            ("target.host".to_owned(), "h1".to_owned()),
            ("__name__".to_owned(), "memory".to_owned()),
            ("pid".to_owned(), "42".to_owned()),
        ];
        let pprof = b"\x1f\x8b not really pprof".to_vec();
        pusher.send(Push::new([(labels, pprof.clone())]).unwrap());

        let req = seen.recv_timeout(WAIT).unwrap();
        assert_eq!(
            req.request_line,
            "POST /push.v1.PusherService/Push HTTP/1.1"
        );
        assert_eq!(req.header("content-type"), Some("application/proto"));
        assert_eq!(req.header("content-encoding"), Some("gzip"));
        assert_eq!(req.header("x-scope-orgid"), Some("team-a"));
        assert_eq!(req.header("authorization"), Some("Basic dXNlcjpwYXNz"));
        assert!(req.header("user-agent").unwrap().starts_with("leaktrace/"));
        let decoded = req.decode();
        assert_eq!(decoded.series.len(), 1);
        let series = &decoded.series[0];
        let names: Vec<_> = series.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "pid", "service_name", "target_host"]);
        assert_eq!(series.labels[0].value, "memory");
        assert_eq!(series.labels[2].value, "svc");
        assert_eq!(series.samples.len(), 1);
        assert_eq!(series.samples[0].raw_profile, pprof);
        let id = &series.samples[0].id;
        assert_eq!((id.len(), &id[14..15]), (36, "4"), "uuid v4: {id}");

        let stats = wait_until(&pusher, "success", |s| s.sent_ok == 1);
        assert_eq!(stats.bytes_sent, req.body.len() as u64);
        assert!(stats.last_success_unix.is_some());
        assert_eq!(
            (stats.retries, stats.queued, stats.last_error),
            (0, 0, None)
        );
        assert_eq!(pusher.shutdown(WAIT), 0);
    }

    #[test]
    fn retries_5xx_then_succeeds() {
        let (url, seen) = server(vec![(503, "busy"), (503, "busy"), (200, "{}")], None);
        let pusher = Pusher::start(config(&url)).unwrap();
        pusher.send(push("once"));
        let stats = wait_until(&pusher, "success", |s| s.sent_ok == 1);
        assert_eq!((stats.retries, stats.failed_5xx), (2, 2));
        assert_eq!((stats.failed_transport, stats.rejected), (0, 0));
        assert_eq!(stats.last_error.as_deref(), Some("HTTP 503: busy"));
        let bodies: Vec<_> = seen.try_iter().map(|s| profile_of(&s)).collect();
        assert_eq!(bodies, [b"once"; 3]);
        assert_eq!(pusher.shutdown(WAIT), 0);
    }

    #[test]
    fn rejects_4xx_without_retry() {
        let (url, seen) = server(vec![(400, "bad \"labels\"\n"), (200, "{}")], None);
        let mut config = config(&url);
        config.auth = Some(Auth::Bearer("tok".to_owned()));
        let pusher = Pusher::start(config).unwrap();
        pusher.send(push("bad"));
        let stats = wait_until(&pusher, "rejection", |s| s.rejected == 1);
        assert_eq!((stats.retries, stats.failed_5xx, stats.sent_ok), (0, 0, 0));
        assert_eq!(
            stats.last_error.as_deref(),
            Some(r#"HTTP 400: bad \"labels\"\n"#)
        );
        let req = seen.recv_timeout(WAIT).unwrap();
        assert_eq!(req.header("authorization"), Some("Bearer tok"));
        assert_eq!(req.header("x-scope-orgid"), None);
        // The next push takes the second answer, so the rejected one was not sent again.
        pusher.send(push("good"));
        wait_until(&pusher, "success", |s| s.sent_ok == 1);
        assert_eq!(profile_of(&seen.recv_timeout(WAIT).unwrap()), b"good");
        assert_eq!(pusher.shutdown(WAIT), 0);
    }

    #[test]
    fn connection_refused_retries_and_shutdown_is_prompt() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = config(&format!("http://127.0.0.1:{port}"));
        // Long enough that only an interrupted backoff lets shutdown return in time.
        config.backoff_base = Duration::from_secs(10);
        let pusher = Pusher::start(config).unwrap();
        pusher.send(push("lost"));
        let stats = wait_until(&pusher, "a retry", |s| s.retries == 1);
        assert_eq!((stats.failed_transport, stats.sent_ok), (1, 0));
        assert!(stats.last_error.is_some());
        let started = Instant::now();
        assert_eq!(pusher.shutdown(Duration::from_millis(300)), 1);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn drop_does_not_hang() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = config(&format!("http://127.0.0.1:{port}"));
        config.backoff_base = Duration::from_secs(10);
        let pusher = Pusher::start(config).unwrap();
        pusher.send(push("a"));
        pusher.send(push("b"));
        wait_until(&pusher, "a retry", |s| s.retries == 1);
        let started = Instant::now();
        drop(pusher);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn full_queue_drops_oldest() {
        let (release, hold) = mpsc::channel();
        let (url, seen) = server(vec![(200, ""), (200, ""), (200, "")], Some(hold));
        let mut config = config(&url);
        config.queue = 2;
        let pusher = Pusher::start(config).unwrap();
        pusher.send(push("1"));
        // The server holds its answer: push 1 is on the wire, the rest must queue.
        assert_eq!(profile_of(&seen.recv_timeout(WAIT).unwrap()), b"1");
        for tag in ["2", "3", "4", "5", "6"] {
            pusher.send(push(tag));
        }
        let stats = pusher.stats();
        assert_eq!((stats.dropped_queue_full, stats.queued), (3, 2));
        release.send(()).unwrap();
        wait_until(&pusher, "three sent", |s| s.sent_ok == 3);
        let rest: Vec<_> = (0..2)
            .map(|_| profile_of(&seen.recv_timeout(WAIT).unwrap()))
            .collect();
        assert_eq!(rest, [b"5", b"6"]);
        assert_eq!(pusher.shutdown(WAIT), 0);
    }

    #[test]
    fn shutdown_sends_what_is_queued() {
        let (release, hold) = mpsc::channel();
        let (url, seen) = server(vec![(200, ""), (200, ""), (200, "")], Some(hold));
        let pusher = Pusher::start(config(&url)).unwrap();
        pusher.send(push("1"));
        seen.recv_timeout(WAIT).unwrap();
        pusher.send(push("2"));
        pusher.send(push("3"));
        release.send(()).unwrap();
        assert_eq!(pusher.shutdown(WAIT), 0);
        let rest: Vec<_> = seen.try_iter().map(|s| profile_of(&s)).collect();
        assert_eq!(rest, [b"2", b"3"]);
    }

    #[test]
    fn old_pushes_expire() {
        let (url, _seen) = server(vec![(503, ""); 3], None);
        let mut config = config(&url);
        config.max_age = Duration::from_millis(500);
        config.backoff_base = Duration::from_millis(250);
        let pusher = Pusher::start(config).unwrap();
        pusher.send(push("old"));
        // 503 at ~0 ms, retry at ~250 ms, 503 again: the next retry (~500 ms later) is
        // past the max age, so the push is dropped then instead of waiting. (On a slow
        // machine the first retry may already fall past it.)
        let stats = wait_until(&pusher, "expiry", |s| s.expired == 1);
        assert!(matches!(stats.failed_5xx, 1 | 2), "{stats:?}");
        assert_eq!((stats.retries, stats.sent_ok), (stats.failed_5xx - 1, 0));
        assert_eq!(pusher.shutdown(WAIT), 0);
    }

    #[test]
    fn https_goes_through_rustls() {
        // A plain HTTP answer to the TLS handshake: only a TLS client notices.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        });
        let mut config = config(&url);
        config.backoff_base = Duration::from_secs(10);
        let pusher = Pusher::start(config).unwrap();
        pusher.send(push("tls"));
        let stats = wait_until(&pusher, "a TLS failure", |s| s.failed_transport == 1);
        let error = stats.last_error.unwrap();
        assert!(error.contains("corrupt message"), "{error}");
        assert_eq!(stats.sent_ok, 0);
    }

    #[test]
    fn status_classes() {
        let class = |status, retry_429| match classify(status, retry_429) {
            Outcome::Sent => "sent",
            Outcome::Retry => "retry",
            Outcome::Rejected => "rejected",
        };
        assert_eq!(class(200, false), "sent");
        assert_eq!(class(204, false), "sent");
        assert_eq!(class(500, false), "retry");
        assert_eq!(class(503, false), "retry");
        assert_eq!(class(408, false), "retry");
        assert_eq!(class(429, false), "rejected");
        assert_eq!(class(429, true), "retry");
        assert_eq!(class(400, true), "rejected");
        assert_eq!(class(401, false), "rejected");
        assert_eq!(class(302, false), "rejected");
    }

    #[test]
    fn label_rules() {
        let owned = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        let sorted = labels(owned(&[
            ("service_name", "svc"),
            ("9lives", "x"),
            ("host.name", "h"),
            ("__name__", "memory:alloc"),
            ("küche", "y"),
        ]))
        .unwrap();
        let names: Vec<_> = sorted.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            ["__name__", "_lives", "host_name", "k_che", "service_name"]
        );

        assert_eq!(
            labels(owned(&[("__name__", "memory")])),
            Err(LabelError::Missing("service_name"))
        );
        assert_eq!(
            labels(owned(&[("__name__", "memory"), ("service_name", "")])),
            Err(LabelError::Missing("service_name"))
        );
        assert_eq!(
            labels(owned(&[("service_name", "svc")])),
            Err(LabelError::Missing("__name__"))
        );
        assert_eq!(
            labels(owned(&[
                ("__name__", "memory"),
                ("service_name", "svc"),
                ("a.b", "1"),
                ("a_b", "2"),
            ])),
            Err(LabelError::Duplicate("a_b".to_owned()))
        );
        assert_eq!(
            labels(owned(&[
                ("__name__", "memory"),
                ("service_name", "s"),
                ("", "v")
            ])),
            Err(LabelError::EmptyName)
        );
        assert_eq!(
            labels(owned(&[("__name__", "heap-bytes"), ("service_name", "s")])),
            Err(LabelError::MetricName("heap-bytes".to_owned()))
        );
        let mut many = owned(&[("__name__", "memory"), ("service_name", "s")]);
        many.extend((0..29).map(|i| (format!("l{i}"), "v".to_owned())));
        assert_eq!(labels(many), Err(LabelError::TooMany(31)));
        assert!(Push::new([(owned(&[("__name__", "m")]), Vec::new())]).is_err());
    }

    #[test]
    fn config_check() {
        let check = |url: &str| {
            let mut config = PushConfig::new(url);
            config
                .check()
                .map(|()| config.url)
                .map_err(|e| e.to_string())
        };
        assert_eq!(check("http://pyro:4040/").unwrap(), "http://pyro:4040");
        assert_eq!(
            check("https://example.com/prefix/").unwrap(),
            "https://example.com/prefix"
        );
        assert!(check("HTTP://pyro").is_err());
        assert!(
            check("pyro:4040")
                .unwrap_err()
                .contains("http:// or https://")
        );
        assert!(
            check("ftp://pyro")
                .unwrap_err()
                .contains("http:// or https://")
        );
        assert!(check("http://").is_err());
        assert!(check("http://a b").is_err());
        assert!(
            check("http://u:p@pyro")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(check("http://pyro/?x=1").unwrap_err().contains("query"));
        assert!(check("http://pyro/#x").unwrap_err().contains("fragment"));
        assert!(check("http://pyro:99999").unwrap_err().contains("port"));
        assert!(check("http://pyro:").unwrap_err().contains("port"));
        assert!(check("http://pyro:0").unwrap_err().contains("port"));
        assert_eq!(check("http://[::1]:4040/").unwrap(), "http://[::1]:4040");
        assert_eq!(check("http://[::1]").unwrap(), "http://[::1]");

        let mut config = PushConfig::new("http://pyro");
        config.tenant = Some("a\nb".to_owned());
        assert!(matches!(
            config.check(),
            Err(ConfigError::Header { what: "tenant" })
        ));
        let mut config = PushConfig::new("http://pyro");
        config.queue = 0;
        assert_eq!(
            config.check().unwrap_err().to_string(),
            "push queue must be greater than zero"
        );
        let mut config = PushConfig::new("http://pyro");
        config.backoff_base = Duration::ZERO;
        assert!(matches!(
            config.check(),
            Err(ConfigError::Zero { what: "backoff" })
        ));
        let secret = Auth::Bearer("s3cret".to_owned());
        assert!(!format!("{secret:?}").contains("s3cret"));
    }

    #[test]
    fn helpers() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Pusher>();
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        let (a, b) = (uuid_v4(), uuid_v4());
        assert_ne!(a, b);
        for id in [&a, &b] {
            let groups: Vec<_> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        }
        let base = Duration::from_secs(1);
        for (failures, secs) in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (40, 30.0)] {
            let d = backoff(base, failures).as_secs_f64();
            assert!(
                d >= secs * 0.8 - 1e-9 && d <= secs * 1.2 + 1e-9,
                "{failures}: {d}"
            );
        }
    }
}
