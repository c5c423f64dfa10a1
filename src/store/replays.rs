//! Replays in Postgres: what each asks for, how far it got, and the statements the replay
//! worker moves it on with (see `dispatch::replay`).

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use sqlx::PgPool;
use uuid::Uuid;

use crate::api::{TargetKey, TargetKind, WebhookReplay};

/// A replay as it is asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReplay {
    pub namespace: String,
    pub name: String,
    /// The resource's uid, or what else tells replays of one name apart.
    pub uid: String,
    pub target: TargetKey,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub event_types: Vec<String>,
    pub filter: Option<String>,
    /// `succeeded`, `dead`, `failed`, `all`.
    pub statuses: Vec<String>,
    pub dry_run: bool,
    pub rate: u32,
}

impl NewReplay {
    /// The replay a WebhookReplay asks for (`uid` tells it apart from others of its name), or
    /// why it cannot be one.
    pub fn from_resource(replay: &WebhookReplay, uid: String) -> Result<Self, String> {
        let namespace = replay.namespace().unwrap_or_else(|| "default".to_owned());
        let spec = &replay.spec;
        let target = spec
            .target
            .key(&namespace)
            .ok_or("spec.target: set subscription, or source and handler")?;
        let time = |field: &str, text: &str| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|err| format!("spec.{field}: {err}"))
        };
        Ok(Self {
            namespace,
            name: replay.name_any(),
            uid,
            target,
            from: time("from", &spec.from)?,
            to: time("to", &spec.to)?,
            event_types: spec.events.clone(),
            filter: spec.filter.clone(),
            statuses: spec.statuses.iter().map(|s| s.as_str().to_owned()).collect(),
            dry_run: spec.dry_run,
            rate: spec.rate,
        })
    }
}

/// Records a replay unless one of the same namespace, name and uid exists; its id either way.
pub async fn upsert(pool: &PgPool, replay: &NewReplay) -> sqlx::Result<Uuid> {
    sqlx::query_scalar(
        "WITH inserted AS (
             INSERT INTO replays (id, namespace, name, uid, target_kind, target, window_from, window_to,
                                  event_types, filter, statuses, dry_run, rate)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (namespace, name, uid) DO NOTHING
             RETURNING id
         )
         SELECT id FROM inserted
         UNION ALL
         SELECT id FROM replays WHERE namespace = $2 AND name = $3 AND uid = $4
         LIMIT 1",
    )
    .bind(Uuid::now_v7())
    .bind(&replay.namespace)
    .bind(&replay.name)
    .bind(&replay.uid)
    .bind(replay.target.kind.as_str())
    .bind(&replay.target.name)
    .bind(replay.from)
    .bind(replay.to)
    .bind(&replay.event_types)
    .bind(&replay.filter)
    .bind(&replay.statuses)
    .bind(replay.dry_run)
    .bind(replay.rate as i32)
    .fetch_one(pool)
    .await
}

/// Where a replay stands.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub id: Uuid,
    pub namespace: String,
    pub name: String,
    pub target_kind: String,
    pub target: String,
    pub window_from: DateTime<Utc>,
    pub window_to: DateTime<Utc>,
    pub dry_run: bool,
    /// `running`, `complete` (every matching event enqueued) or `failed`.
    pub state: String,
    pub message: Option<String>,
    pub matched: i64,
    pub enqueued: i64,
    /// Enqueued deliveries that have succeeded since, and that went dead.
    pub delivered: i64,
    pub failed: i64,
    /// Enqueued deliveries still on their way.
    pub outstanding: i64,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const PROGRESS: &str =
    "SELECT r.id, r.namespace, r.name, r.target_kind, r.target, r.window_from, r.window_to,
            r.dry_run, r.state, r.message, r.matched, r.enqueued,
            count(d.id) FILTER (WHERE d.status = 'succeeded') AS delivered,
            count(d.id) FILTER (WHERE d.status = 'dead') AS failed,
            count(d.id) FILTER (WHERE d.status IN ('pending', 'failed')) AS outstanding,
            r.created_at, r.finished_at
     FROM replays r LEFT JOIN delivery_states d ON d.replay_id = r.id";

/// The progress of the replay of a namespace, name and uid.
pub async fn progress(
    pool: &PgPool,
    namespace: &str,
    name: &str,
    uid: &str,
) -> sqlx::Result<Option<Progress>> {
    sqlx::query_as(&format!(
        "{PROGRESS} WHERE r.namespace = $1 AND r.name = $2 AND r.uid = $3 GROUP BY r.id"
    ))
    .bind(namespace)
    .bind(name)
    .bind(uid)
    .fetch_optional(pool)
    .await
}

/// Every replay (in the allowed namespaces), newest first.
pub async fn list(pool: &PgPool, allowed: Option<&[String]>) -> sqlx::Result<Vec<Progress>> {
    sqlx::query_as(&format!(
        "{PROGRESS} WHERE ($1::text[] IS NULL OR r.namespace = ANY ($1)) GROUP BY r.id ORDER BY r.created_at DESC"
    ))
    .bind(allowed)
    .fetch_all(pool)
    .await
}

/// Forgets a replay: what it has not enqueued yet is never enqueued. Deliveries it enqueued go
/// on. Whether there was one.
pub async fn remove(pool: &PgPool, namespace: &str, name: &str, uid: &str) -> sqlx::Result<bool> {
    let removed = sqlx::query("DELETE FROM replays WHERE namespace = $1 AND name = $2 AND uid = $3")
        .bind(namespace)
        .bind(name)
        .bind(uid)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(removed > 0)
}

/// Forgets a replay started through the admin API (others belong to a resource or a file, which
/// would record them again); whether there was one.
pub async fn remove_by_id(pool: &PgPool, id: Uuid, allowed: Option<&[String]>) -> sqlx::Result<bool> {
    let removed = sqlx::query(
        "DELETE FROM replays WHERE id = $1 AND starts_with(uid, 'api:')
           AND ($2::text[] IS NULL OR namespace = ANY ($2))",
    )
    .bind(id)
    .bind(allowed)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(removed > 0)
}

/// Forgets the replays whose uid starts with `prefix` (one origin, such as standalone's files)
/// other than `keep` (namespace, name, uid); how many.
pub async fn remove_others(
    pool: &PgPool,
    prefix: &str,
    keep: &[(String, String, String)],
) -> sqlx::Result<u64> {
    let column = |f: fn(&(String, String, String)) -> &String| keep.iter().map(f).collect::<Vec<_>>();
    Ok(sqlx::query(
        "DELETE FROM replays r WHERE starts_with(r.uid, $1)
           AND (r.namespace, r.name, r.uid) NOT IN (SELECT * FROM UNNEST($2::text[], $3::text[], $4::text[]))",
    )
    .bind(prefix)
    .bind(column(|k| &k.0))
    .bind(column(|k| &k.1))
    .bind(column(|k| &k.2))
    .execute(pool)
    .await?
    .rows_affected())
}

/// A running replay this worker holds for a while.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Leased {
    pub id: Uuid,
    pub namespace: String,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub target_kind: TargetKind,
    pub target: String,
    pub window_from: DateTime<Utc>,
    pub window_to: DateTime<Utc>,
    pub event_types: Vec<String>,
    pub filter: Option<String>,
    pub statuses: Vec<String>,
    pub dry_run: bool,
    pub rate: i32,
    pub cursor_at: Option<DateTime<Utc>>,
    pub cursor_id: Option<Uuid>,
    /// The lease's end, also its token (see [`advance`]).
    pub lease_until: DateTime<Utc>,
}

impl Leased {
    pub fn target_key(&self) -> TargetKey {
        TargetKey {
            namespace: self.namespace.clone(),
            kind: self.target_kind,
            name: self.target.clone(),
        }
    }
}

/// Takes the running replays no worker holds (or whose worker's lease ran out), for `lease`.
pub async fn lease(pool: &PgPool, lease: std::time::Duration, limit: i64) -> sqlx::Result<Vec<Leased>> {
    sqlx::query_as(
        "UPDATE replays r SET lease_until = now() + interval '1 millisecond' * $1
         WHERE r.id IN (SELECT id FROM replays
                        WHERE state = 'running' AND (lease_until IS NULL OR lease_until < now())
                        ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING r.id, r.namespace, r.name, r.target_kind, r.target, r.window_from, r.window_to,
                   r.event_types, r.filter, r.statuses, r.dry_run, r.rate, r.cursor_at, r.cursor_id,
                   r.lease_until",
    )
    .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A stored event of a replay's window, with what its target's expressions need.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WindowEvent {
    pub id: Uuid,
    pub received_at: DateTime<Utc>,
    pub source: String,
    pub event_type: String,
    pub headers: serde_json::Value,
    pub body: Vec<u8>,
    /// Its delivery to the replay's target, if it has one, and that delivery's status
    /// (`in_flight` while a claim or a lease is out).
    pub delivery_id: Option<Uuid>,
    pub delivery_status: Option<String>,
}

/// The next `limit` events of the replay's window after its cursor, in the order received.
pub async fn next_events(pool: &PgPool, replay: &Leased, limit: i64) -> sqlx::Result<Vec<WindowEvent>> {
    // The delivery's state as every reader shows it (migrations/0022).
    const SQL: &str =
        "SELECT e.id, e.received_at, e.source, e.event_type, e.headers, e.body, d.id AS delivery_id,
                d.state AS delivery_status
         FROM events e
         LEFT JOIN delivery_states d ON d.event_id = e.id AND d.target_kind = $4 AND d.target = $5
         WHERE e.namespace = $1 AND e.received_at >= $2 AND e.received_at < $3
           AND ($6::timestamptz IS NULL OR (e.received_at, e.id) > ($6, $7))
         ORDER BY e.received_at, e.id
         LIMIT $8";
    sqlx::query_as(SQL)
        .persistent(false)
        .bind(&replay.namespace)
        .bind(replay.window_from)
        .bind(replay.window_to)
        .bind(replay.target_kind.as_str())
        .bind(&replay.target)
        .bind(replay.cursor_at)
        .bind(replay.cursor_id)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// A delivery a replay creates for an event that had none to its target.
pub struct ReplayDelivery {
    pub event: Uuid,
    pub ordering_key: Option<String>,
}

/// One batch of a replay, applied if the lease still holds: deliveries requeued and created,
/// the cursor and the counts moved on, and the replay finished when `outcome` says so.
pub struct Batch {
    pub cursor: Option<(DateTime<Utc>, Uuid)>,
    pub matched: i64,
    pub requeue: Vec<Uuid>,
    pub create: Vec<ReplayDelivery>,
    pub outcome: Option<Finished>,
}

pub enum Finished {
    Complete,
    Failed(String),
}

/// Applies a batch in one transaction; false when the lease was lost (another worker, or the
/// replay was removed), and then nothing is applied. The next step is any worker's, but not
/// before `pace` has passed: a replay's rate holds for all replicas together.
pub async fn advance(
    pool: &PgPool,
    replay: &Leased,
    batch: &Batch,
    pace: std::time::Duration,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let held: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM replays WHERE id = $1 AND lease_until = $2 FOR UPDATE")
            .bind(replay.id)
            .bind(replay.lease_until)
            .fetch_optional(&mut *tx)
            .await?;
    if held.is_none() {
        return Ok(false);
    }
    let requeued = super::history::requeue_in(&mut tx, &batch.requeue, Some(replay.id)).await?;
    // The events to make deliveries for, held until this commits (retention skips them): those
    // deleted since they were read are left out.
    let present: std::collections::HashSet<Uuid> =
        sqlx::query_scalar("SELECT id FROM events WHERE id = ANY ($1) FOR KEY SHARE")
            .bind(batch.create.iter().map(|d| d.event).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let create: Vec<&ReplayDelivery> = batch
        .create
        .iter()
        .filter(|d| present.contains(&d.event))
        .collect();
    let created = sqlx::query(
        "WITH delivery AS (
             INSERT INTO deliveries (id, event_id, namespace, target_kind, target, ordering_key, position, replay_id)
             SELECT d.id, d.event_id, $1, $2, $3, d.ordering_key,
                    CASE WHEN d.ordering_key IS NOT NULL THEN nextval('delivery_position') END, $4
             FROM UNNEST($5::uuid[], $6::uuid[], $7::text[]) WITH ORDINALITY AS d (id, event_id, ordering_key, n)
             ORDER BY d.n
             ON CONFLICT DO NOTHING
             RETURNING id, namespace, target_kind, target, ordering_key, position, event_id
         )
         INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at, ordering_key, position,
                                     event_id)
         SELECT id, namespace, target_kind, target, now(), ordering_key, position, event_id FROM delivery",
    )
    .bind(&replay.namespace)
    .bind(replay.target_kind.as_str())
    .bind(&replay.target)
    .bind(replay.id)
    .bind(
        create
            .iter()
            .map(|d| super::partitions::delivery_id(d.event))
            .collect::<Vec<_>>(),
    )
    .bind(create.iter().map(|d| d.event).collect::<Vec<_>>())
    .bind(create.iter().map(|d| d.ordering_key.as_deref()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let (state, message) = match &batch.outcome {
        None => ("running", None),
        Some(Finished::Complete) => ("complete", None),
        Some(Finished::Failed(why)) => ("failed", Some(why.as_str())),
    };
    sqlx::query(
        "UPDATE replays SET cursor_at = COALESCE($2, cursor_at), cursor_id = COALESCE($3, cursor_id),
                matched = matched + $4, enqueued = enqueued + $5, state = $6, message = $7,
                finished_at = CASE WHEN $6 = 'running' THEN NULL ELSE now() END,
                lease_until = CASE WHEN $6 = 'running' THEN now() + interval '1 millisecond' * $8 END
         WHERE id = $1",
    )
    .bind(replay.id)
    .bind(batch.cursor.map(|c| c.0))
    .bind(batch.cursor.map(|c| c.1))
    .bind(batch.matched)
    .bind((requeued + created) as i64)
    .bind(state)
    .bind(message)
    .bind(pace.as_millis() as f64)
    .execute(&mut *tx)
    .await?;
    if requeued + created > 0 {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::events::DELIVERIES_CHANNEL)
            .bind(format!(
                "{}/{}/{}",
                replay.namespace, replay.target_kind, replay.target
            ))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}
