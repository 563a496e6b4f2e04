//! The dashboard (seed 3's port, 8089): every system's pipeline drawn live — what feeds it,
//! its topics with their rates, the consumer groups with their lag, the stores with their
//! records — dead letters with their latest reasons, recent messages streaming in (SSE),
//! search and trace over the audit log, links to each API's `/docs` and `/metrics`.
//!
//! Everything it shows comes from the bus (published and committed offsets), the stores
//! (`System::records`), the audit log and its search index — the same sources as `livros
//! stats` and `livros logs`, so it works the same embedded or on Kafka and real stores,
//! in `livros up` or beside services run apart (`livros dashboard`). The page, its script
//! and its style are compiled into the binary: no CDN.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::Settings;
use crate::bus::Bus;
use crate::search::{SearchEngine, TopicSystems};
use crate::store::Stores;
use crate::systems::System;

/// Where the dashboard listens unless told otherwise (seed 3's port).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8089";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// How often the live stream looks at the audit log.
const TAIL_EVERY: Duration = Duration::from_millis(500);
/// How much of the log's end a new viewer is shown first.
const TAIL_BACKLOG: u64 = 16 * 1024;

/// A consumer as the page draws it.
#[derive(Debug, Clone)]
struct Group {
    topic: String,
    group: String,
    place: String,
    dead_letters: String,
}

struct Dashboard {
    bus: Arc<dyn Bus>,
    stores: Stores,
    systems: Vec<Arc<dyn System>>,
    /// Per system, its consumers.
    groups: Vec<Vec<Group>>,
    /// Per system, its topics.
    topics: Vec<Vec<String>>,
    s3_group: String,
    audit_log: PathBuf,
    topic_systems: TopicSystems,
    search: Arc<dyn SearchEngine>,
    /// Each system's API base URL, where it serves one.
    apis: Vec<(&'static str, String)>,
}

type Shared = State<Arc<Dashboard>>;

/// The dashboard's routes over the bus, the stores and the audit log the settings name;
/// `apis` are the systems' API base URLs (`http://127.0.0.1:8000`), for links.
pub fn router(
    bus: Arc<dyn Bus>,
    stores: Stores,
    settings: &Settings,
    search: Arc<dyn SearchEngine>,
    apis: Vec<(&'static str, String)>,
) -> Router {
    let systems = settings.systems.0.clone();
    let groups = systems
        .iter()
        .map(|s| {
            s.consumers(&stores, settings)
                .into_iter()
                .map(|c| Group {
                    topic: c.topic,
                    group: c.group,
                    place: c.place,
                    dead_letters: c.dead_letters,
                })
                .collect()
        })
        .collect();
    let topics = systems.iter().map(|s| s.topics(&settings.topics)).collect();
    let state = Arc::new(Dashboard {
        bus,
        stores,
        systems,
        groups,
        topics,
        s3_group: settings.s3_group.clone(),
        audit_log: settings.audit_log.clone(),
        topic_systems: settings.topic_systems(),
        search,
        apis,
    });
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/overview", get(overview))
        .route("/api/events", get(events))
        .route("/api/search", get(search_handler))
        .route("/api/trace/{id}", get(trace_handler))
        .route("/metrics", get(crate::api::metrics))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": format!("{what}: {e}")})),
    )
        .into_response()
}

/// Everything the page draws, at this instant: per system, its topics (published), its
/// consumer groups (committed, lag), its stores (records); dead letters with their latest
/// reasons; the audit log's group. Rates are the page's (published now minus before).
async fn overview(State(d): Shared) -> Response {
    let all_topics: Vec<String> = d.topics.iter().flatten().cloned().collect();
    let mut groups: Vec<String> = d.groups.iter().flatten().map(|g| g.group.clone()).collect();
    groups.push(d.s3_group.clone());
    groups.sort();
    groups.dedup();
    let stats = match d.bus.stats(&all_topics, &groups).await {
        Ok(s) => s,
        Err(e) => return unavailable("the bus", e),
    };
    let published = |t: &str| stats.get(t).map(|s| s.published).unwrap_or(0);
    let committed = |t: &str, g: &str| {
        stats
            .get(t)
            .and_then(|s| s.consumed.get(g).copied())
            .unwrap_or(0)
    };
    let mut systems = Vec::new();
    let mut dead = BTreeSet::new();
    for (i, system) in d.systems.iter().enumerate() {
        let topics: Vec<Value> = d.topics[i]
            .iter()
            .map(|t| json!({"name": t, "published": published(t)}))
            .collect();
        let consumers: Vec<Value> = d.groups[i]
            .iter()
            .map(|g| {
                dead.insert(g.dead_letters.clone());
                let done = committed(&g.topic, &g.group);
                json!({"topic": g.topic, "group": g.group, "place": g.place,
                       "dead_letters": g.dead_letters,
                       "committed": done, "lag": published(&g.topic) - done})
            })
            .collect();
        let stores = match system.records(&d.stores).await {
            Ok(records) => records
                .into_iter()
                .map(|(kind, what, n)| {
                    json!({"kind": kind.name(), "engine": d.stores.describe(kind),
                           "records": what, "count": n})
                })
                .collect(),
            Err(e) => vec![json!({"error": e.to_string()})],
        };
        let api = d
            .apis
            .iter()
            .find(|(name, _)| *name == system.name())
            .map(|(_, url)| url.clone());
        systems.push(json!({
            "name": system.name(), "api": api, "topics": topics,
            "consumers": consumers, "stores": stores,
        }));
    }
    let mut dead_letters = Vec::new();
    for topic in dead {
        let count = published(&topic);
        let mut reasons = Vec::new();
        if count > 0 {
            let query = crate::search::Query {
                terms: vec![(crate::search::Field::Keyword("topic"), topic.clone())],
                limit: 3,
                ..Default::default()
            };
            // The index may lag the bus by a moment; the count is the bus's.
            if let Ok(found) = d.search.search(&query).await {
                reasons = found.hits.iter().map(|h| h["reason"].clone()).collect();
            }
        }
        dead_letters.push(json!({"topic": topic, "count": count, "latest": reasons}));
    }
    let s3_lag: i64 = all_topics
        .iter()
        .map(|t| published(t) - committed(t, &d.s3_group))
        .sum();
    Json(json!({
        "time_ms": chrono::Utc::now().timestamp_millis(),
        "bus": d.bus.describe(),
        "search": d.search.describe(),
        "systems": systems,
        "dead_letters": dead_letters,
        "audit": {"group": d.s3_group, "log": d.audit_log.display().to_string(), "lag": s3_lag},
    }))
    .into_response()
}

/// What the live stream sends of one audit line.
fn brief(line: &[u8], position: u64, systems: &TopicSystems) -> Option<Value> {
    let doc = crate::search::document(line, position, systems)?;
    let mut f = doc.fields;
    let text: String = f[crate::search::TEXT_FIELD]
        .as_str()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    let map = f.as_object_mut()?;
    map.remove("payload");
    map.insert(crate::search::TEXT_FIELD.into(), text.into());
    Some(f)
}

/// Recent messages as they reach the audit log (Server-Sent Events, one `message` event
/// per line): first the end of the log, then every line S3 appends.
async fn events(State(d): Shared) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let start = std::fs::metadata(&d.audit_log)
        .map(|m| m.len().saturating_sub(TAIL_BACKLOG))
        .unwrap_or(0);
    let state = (d, start, start > 0);
    let stream = futures::stream::unfold(state, |(d, mut position, mut mid_line)| async move {
        loop {
            let (log, at) = (d.audit_log.clone(), position);
            let read =
                tokio::task::spawn_blocking(move || crate::search::read_lines(&log, at, 500)).await;
            let Ok(Ok((lines, end))) = read else {
                tokio::time::sleep(TAIL_EVERY).await;
                continue;
            };
            // The backlog starts mid-line: the first (partial) line, once whole, is skipped.
            let skip = usize::from(mid_line && !lines.is_empty());
            if skip == 1 {
                mid_line = false;
            }
            position = end;
            let events: Vec<Result<Event, Infallible>> = lines
                .iter()
                .skip(skip)
                .filter_map(|(at, line)| brief(line, *at, &d.topic_systems))
                .map(|v| Ok(Event::default().data(v.to_string())))
                .collect();
            if events.is_empty() {
                tokio::time::sleep(TAIL_EVERY).await;
                continue;
            }
            return Some((futures::stream::iter(events), (d, position, mid_line)));
        }
    });
    use futures::StreamExt;
    Sse::new(stream.flatten()).keep_alive(KeepAlive::default())
}

#[derive(Deserialize)]
struct SearchParams {
    #[serde(default)]
    q: String,
    limit: Option<usize>,
}

/// `GET /api/search?q=…&limit=…`: the audit log search of `livros logs search`.
async fn search_handler(State(d): Shared, Query(p): Query<SearchParams>) -> Response {
    let query = match crate::search::Query::parse(&p.q, p.limit.unwrap_or(50).min(500)) {
        Ok(q) => q,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.to_string()})),
            )
                .into_response();
        }
    };
    match d.search.search(&query).await {
        Ok(found) => Json(found).into_response(),
        Err(e) => unavailable("search", e),
    }
}

/// `GET /api/trace/{id}`: every message of one request, as `livros logs trace`.
async fn trace_handler(State(d): Shared, Path(id): Path<String>) -> Response {
    match crate::search::trace(&*d.search, &id).await {
        Ok(hits) => Json(json!({"hits": hits})).into_response(),
        Err(e) => unavailable("search", e),
    }
}
