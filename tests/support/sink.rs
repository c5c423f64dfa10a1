//! A real HTTP receiver for delivery tests: answers per path from a script (then 200), and
//! records every request it got.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// A status with one header, such as 429 with Retry-After.
    WithHeader(u16, &'static str, String),
    /// Never answer.
    Hang,
    /// Drop the connection without an answer.
    Reset,
    /// Answer 200 after this long.
    Slow(Duration),
}

#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// What the sink answered (or began to).
    pub reply: Reply,
}

/// Chooses the answer to a request from its body (see [`Sink::answer_with`]).
pub type Chooser = Arc<dyn Fn(&[u8]) -> Reply + Send + Sync>;

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct SinkState {
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    always: Mutex<HashMap<String, Reply>>,
    choosers: Mutex<HashMap<String, Chooser>>,
    received: Mutex<HashMap<String, Vec<Received>>>,
    arrived: Notify,
}

pub struct Sink {
    pub base: String,
    state: Arc<SinkState>,
}

async fn receive(
    State(state): State<Arc<SinkState>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        // Chosen and recorded under one lock, so the record's order is the order of answers.
        let mut received = state.received.lock().unwrap();
        let scripted = state
            .scripts
            .lock()
            .unwrap()
            .get_mut(&path)
            .and_then(VecDeque::pop_front);
        let chosen = || {
            state
                .choosers
                .lock()
                .unwrap()
                .get(&path)
                .map(|choose| choose(&body))
        };
        let reply = scripted
            .or_else(chosen)
            .or_else(|| state.always.lock().unwrap().get(&path).cloned())
            .unwrap_or(Reply::Status(200));
        received.entry(path.clone()).or_default().push(Received {
            headers,
            body,
            at: Instant::now(),
            reply: reply.clone(),
        });
        reply
    };
    state.arrived.notify_waiters();
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::WithHeader(code, name, value) => {
            (StatusCode::from_u16(code).unwrap(), [(name, value)], "").into_response()
        }
        Reply::Hang => std::future::pending().await,
        // Unwinding ends the connection's task, which closes the socket mid-request; without
        // the panic hook, so nothing is printed.
        Reply::Reset => std::panic::resume_unwind(Box::new("reset by the sink")),
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK.into_response()
        }
    }
}

impl Sink {
    pub async fn start() -> Sink {
        let state = Arc::new(SinkState::default());
        let app = axum::Router::new()
            .route("/{path}", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Sink { base, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// The next answers for `path`, in order; afterwards 200 (or what `always` set).
    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .insert(path.to_owned(), replies.into());
    }

    /// Answers each request to `path` as `choose` says from its body (after any script).
    pub fn answer_with(&self, path: &str, choose: Chooser) {
        self.state
            .choosers
            .lock()
            .unwrap()
            .insert(path.to_owned(), choose);
    }

    pub fn always(&self, path: &str, reply: Reply) {
        self.state.always.lock().unwrap().insert(path.to_owned(), reply);
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `path` got at least `count` requests; panics after `within`.
    pub async fn wait_for(&self, path: &str, count: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let arrived = self.state.arrived.notified();
            let got = self.received(path);
            if got.len() >= count {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{path}: {} of {count} requests within {within:?}",
                got.len()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), arrived).await;
        }
    }
}
