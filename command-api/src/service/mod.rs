//! The command service. Every command takes one path, [`CommandService::execute`]:
//! check the model is ready, take the locks of what the decision reads,
//! answer a retry of an earlier command from the log, check the session,
//! run the aggregate's pure `decide`, append the events as one record under
//! this instance's owner epoch, and answer only once the log follower has
//! read the record back, found it counts and folded it into the write model
//! (docs/design.md §2, docs/scale-out.md §2). One module per aggregate
//! holds its commands.

use platform::error_code::ErrorCode;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use events::connection::ConnectionEvent;
use events::message::MessageEvent;
use events::user::{RevocationReason, Tier, UserEvent};
use events::{Envelope, Event, EventMetadata, Topic};
use platform::auth::Claims;
use redis::aio::ConnectionManager;
use uuid::Uuid;
use views::keys::RedisKeys;

use crate::domain::{Rejection, validation};
use crate::event_log::EventLog;
use crate::locks::{KeyedLocks, LockKey};
use crate::log_follower::{ConfirmError, LogFollower};
use crate::model::{IdempotentCommit, Position, WriteModel};
use crate::password;
use crate::throttle::{LoginThrottle, ThrottleError};

mod connection;
mod message;
mod notification;
mod outcome;
mod presence;
mod user;

pub use outcome::{Answer, CommandContext, CommandError, CommandOutcome};

/// How long sessions and their tokens live, and how many a user may hold.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// From log-in to the session's fixed end (the refresh token's life).
    pub session_ttl: chrono::Duration,
    /// An access token's life; at most the session's remainder.
    pub access_ttl: chrono::Duration,
    /// Active sessions per user; a log-in past it ends the oldest.
    pub max_active: usize,
}

impl SessionPolicy {
    /// When an access token issued at `issued_at` stops being accepted.
    pub fn access_expires_at(&self, issued_at: DateTime<Utc>, session_ends: DateTime<Utc>) -> DateTime<Utc> {
        (issued_at + self.access_ttl).min(session_ends)
    }
}

#[derive(Debug)]
pub struct SignupInput {
    pub email: String,
    pub password: String,
    pub profile: validation::ProfileInput,
}

/// Whose retry a command may be, and what vouches for the caller.
#[derive(Debug, Clone, Copy)]
enum Caller<'a> {
    /// A request with an access token: its session must be active.
    Session(&'a Claims),
    /// A user vouched for otherwise (a checked password, a signed refresh
    /// token whose session the decision checks).
    User(Uuid),
    /// A sign-up: a retry is one by whoever holds the email by now.
    EmailOwner(&'a str),
}

/// What a command decided: the events, and the aggregate they go to.
#[derive(Debug)]
struct Decision {
    aggregate_id: String,
    base_version: u64,
    events: Vec<Event>,
    /// Recorded as the events' actor when the caller had no id yet (sign-up).
    actor: Option<Uuid>,
    /// A slot of the sender's daily limit to reserve (at the owner of the
    /// sender) before the events are appended: a connection request.
    reserve: Option<SlotRequest>,
}

impl Decision {
    fn new(aggregate_id: impl Into<String>, base_version: u64, events: Vec<Event>) -> Self {
        Self { aggregate_id: aggregate_id.into(), base_version, events, actor: None, reserve: None }
    }
}

/// How an instance stands among the others: the reader that folds the log
/// into its model, and the table of which instance serves which partition.
#[derive(Debug)]
pub struct Cluster {
    pub follower: std::sync::Arc<LogFollower>,
    pub routes: std::sync::Arc<crate::routing::Routes>,
}

/// A request slot to reserve on the sender's aggregate.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotRequest {
    pub sender_id: Uuid,
    pub request_id: Uuid,
    pub to_user_id: Uuid,
}

/// Which instance decides a command (docs/scale-out.md §1).
#[derive(Debug, Clone)]
enum Route {
    /// The owner of the partition `key` maps to, where the aggregate the
    /// command appends to lives; the decision reads only that partition.
    Owner(String),
    /// That owner, and the decision also reads users of other partitions
    /// (the caller's session, whether the other user exists): those are
    /// read from the followed copy once it has caught up.
    OwnerReadingUsers(String),
    /// Any instance: what the command names is unknown even to a copy that
    /// has caught up, so it is refused and nothing is appended.
    Here,
}

/// Events of one aggregate as the log's event type.
fn events_of<E>(events: Vec<E>, wrap: fn(E) -> Event) -> Vec<Event> {
    events.into_iter().map(wrap).collect()
}

pub struct CommandService {
    /// Shared with the follower, the one path by which records reach it.
    model: std::sync::Arc<RwLock<WriteModel>>,
    ready: AtomicBool,
    locks: KeyedLocks,
    log: EventLog,
    throttle: LoginThrottle,
    redis: ConnectionManager,
    keys: RedisKeys,
    /// Durable revocation records, which the query API learns logouts from.
    revocations: mongodb::Collection<views::revocation::RevocationDoc>,
    sessions: SessionPolicy,
    /// Signalled when an append failed: the model may now differ from the log.
    resync_needed: tokio::sync::Notify,
    /// Folds the log into the model and confirms that an acknowledged
    /// append counts before it is answered.
    follower: std::sync::Arc<LogFollower>,
    /// This process' id in the owner markers it appends.
    instance: String,
    /// Which instance serves which partition: renewed for the partitions
    /// this one serves, read for request slots and healing.
    routes: std::sync::Arc<crate::routing::Routes>,
    /// Topic → partition → this instance's epoch there (its marker's offset).
    claims: RwLock<HashMap<String, HashMap<i32, i64>>>,
    /// The partition numbers this instance serves: claimed in every topic.
    served: RwLock<BTreeSet<i32>>,
}

impl std::fmt::Debug for CommandService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandService").field("ready", &self.is_ready()).finish_non_exhaustive()
    }
}

/// How long a partition must have had no live owner before an instance acts
/// on it: longer than a rebalance takes to settle, so healing never turns
/// one rebalance into the next.
const UNSERVED_BEFORE_HEALING: std::time::Duration = std::time::Duration::from_secs(8);
/// Rejoins at most this often: past the group's session (6 s), so a dead
/// member has expired by the next join, which then hands its partitions out.
const REJOIN_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// What `renew_and_heal` remembers between ticks.
#[derive(Debug, Default)]
struct Healing {
    /// Partitions nobody serves, since when.
    unserved: HashMap<i32, std::time::Instant>,
    last_rejoin: Option<std::time::Instant>,
}

impl CommandService {
    pub fn new(
        log: EventLog,
        throttle: LoginThrottle,
        redis: ConnectionManager,
        keys: RedisKeys,
        revocations: mongodb::Collection<views::revocation::RevocationDoc>,
        sessions: SessionPolicy,
        Cluster { follower, routes }: Cluster,
    ) -> Self {
        Self {
            model: follower.model(),
            ready: AtomicBool::new(false),
            locks: KeyedLocks::default(),
            log,
            throttle,
            redis,
            keys,
            revocations,
            sessions,
            resync_needed: tokio::sync::Notify::new(),
            follower,
            instance: format!("command-api-{}", Uuid::now_v7()),
            routes,
            claims: RwLock::default(),
            served: RwLock::default(),
        }
    }

    /// Claims the partitions numbered `targets` in every topic of `topics`
    /// for this instance (docs/scale-out.md §2): appends an owner marker to
    /// each, reads the whole log into the model up to past them, and checks
    /// that each marker is still the last one. From then on records carry
    /// these epochs, and the read-back watches for newer markers. A
    /// partition claimed again by another instance right after this one is
    /// given up (the later claim wins). Returns the records folded into the
    /// model.
    ///
    /// `fresh` is a claim the group's assignment asked for. Otherwise this
    /// is how an instance fences itself after an unknown outcome: a send
    /// that failed may still land, but after the new marker it carries a
    /// superseded epoch, and no reader counts it. Such a re-claim first
    /// reads the log and gives up every partition another instance claimed
    /// since this one did: that claim fenced the lost send already, and
    /// claiming over it would fence the rightful owner.
    pub async fn claim(
        &self,
        brokers: &str,
        topics: &[String],
        targets: &BTreeSet<i32>,
        fresh: bool,
    ) -> anyhow::Result<u64> {
        // The follower stops folding while this reads the log into the model.
        let _folding = self.follower.hold().await;
        self.log.learn_partitions(topics)?;
        let mut targets = targets.clone();
        let mut records = 0;
        if !fresh {
            records += crate::event_log::catch_up(brokers, topics, &self.model).await?;
            let superseded = self.superseded(&targets);
            if !superseded.is_empty() {
                tracing::warn!(partitions = ?superseded, "another instance claimed these partitions since we did; giving them up");
                targets.retain(|p| !superseded.contains(p));
            }
        }
        let mut claimed: HashMap<String, HashMap<i32, i64>> = HashMap::new();
        for (topic, partition) in self.log.partitions() {
            if targets.contains(&partition) {
                let epoch = self.log.append_marker(&topic, partition, &self.instance).await?;
                claimed.entry(topic).or_default().insert(partition, epoch);
            }
        }
        records += crate::event_log::catch_up(brokers, topics, &self.model).await?;
        let restart_at: Vec<(String, i32, i64)> = {
            let model = self.read();
            for (topic, partitions) in &claimed {
                for (partition, epoch) in partitions {
                    let latest = model.latest_marker(topic, *partition);
                    if latest != Some(*epoch) {
                        tracing::warn!(
                            topic,
                            partition,
                            epoch,
                            ?latest,
                            "claimed again right after our marker; giving it up"
                        );
                        targets.remove(partition);
                    }
                }
            }
            model.positions().map(|(topic, partition, next)| (topic.to_owned(), partition, next)).collect()
        };
        for partitions in claimed.values_mut() {
            partitions.retain(|p, _| targets.contains(p));
        }
        self.follower.restart_at(&restart_at)?;
        tracing::info!(instance = %self.instance, partitions = ?targets, "claimed the partitions");
        metrics::gauge!("command_api_partitions_served").set(targets.len() as f64);
        *self.claims.write().unwrap_or_else(std::sync::PoisonError::into_inner) = claimed;
        *self.served.write().unwrap_or_else(std::sync::PoisonError::into_inner) = targets;
        Ok(records)
    }

    /// Of `targets`, the partitions whose last marker (as the model has
    /// read) is newer than this instance's epoch there, in any topic.
    fn superseded(&self, targets: &BTreeSet<i32>) -> BTreeSet<i32> {
        let model = self.read();
        let claims = self.claims.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut superseded = BTreeSet::new();
        for (topic, partitions) in claims.iter() {
            for (partition, epoch) in partitions {
                if targets.contains(partition) && model.latest_marker(topic, *partition).is_some_and(|m| m > *epoch) {
                    superseded.insert(*partition);
                }
            }
        }
        superseded
    }

    /// The partitions this instance serves, with its epoch in `topic`
    /// (the routing table's epoch).
    pub fn served_epochs(&self, topic: &str) -> Vec<(i32, i64)> {
        let served = self.served.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        served.iter().filter_map(|p| Some((*p, self.epoch_of(topic, *p)?))).collect()
    }

    /// Whether every partition is served by a live owner (this instance or
    /// one that renewed its route lately).
    pub async fn every_partition_served(&self) -> bool {
        let Some(count) = self.log.partition_count() else { return false };
        let Ok(table) = self.routes.table().await else { return false };
        (0..count).all(|p| self.serves(p) || table.get(&p).is_some_and(|o| o.age < crate::routing::STALE_AFTER))
    }

    pub fn serves(&self, partition: i32) -> bool {
        self.served.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&partition)
    }

    fn epoch_of(&self, topic: &str, partition: i32) -> Option<i64> {
        let claims = self.claims.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        claims.get(topic)?.get(&partition).copied()
    }

    pub fn model_lock(&self) -> &RwLock<WriteModel> {
        &self.model
    }

    fn read(&self) -> RwLockReadGuard<'_, WriteModel> {
        self.model.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, WriteModel> {
        self.model.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn event_log(&self) -> &EventLog {
        &self.log
    }

    pub async fn redis_reachable(&self) -> bool {
        let mut redis = self.redis.clone();
        redis::cmd("PING").query_async::<String>(&mut redis).await.is_ok()
    }

    /// A copy of the model as it stands, for a snapshot: the read lock is
    /// held only while it is cloned.
    pub fn model_copy(&self) -> WriteModel {
        self.read().clone()
    }

    /// Replaces the model (with one read from a snapshot, or an empty one
    /// when the log holds less than the model). The follower forgets where
    /// it was: the next claim reads the log into the new model and restarts
    /// it from there.
    pub async fn replace_model(&self, model: WriteModel) {
        let _folding = self.follower.hold().await;
        self.follower.forget();
        *self.write() = model;
    }

    /// Keeps this instance's partitions claimed, forever: claims afresh
    /// what the group assigns, re-claims after an append whose outcome is
    /// unknown or did not count, renews the routing table every second, and
    /// heals a partition nobody serves (`heal`).
    ///
    /// Every claim holds every command lock and the instance is unready
    /// meanwhile: until the log is read past the new markers no decision
    /// may use the model. The read is of the few records since the last
    /// one, so this is brief. A log that holds less than the model (a
    /// broker that lost data) is read again from offset 0.
    pub async fn keep_ownership(&self, brokers: &str, topics: &[String], membership: &crate::ownership::Membership) {
        let mut assigned = membership.watch();
        // The start claimed what was assigned then; a change since shows
        // at the first tick (served and assigned differ).
        assigned.borrow_and_update();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut healing = Healing::default();
        loop {
            let fresh = tokio::select! {
                changed = assigned.changed() => {
                    if changed.is_err() {
                        tracing::error!("the group member stopped; this instance keeps what it claimed");
                        std::future::pending::<()>().await;
                    }
                    // A rebalance revokes, then assigns: claim what it settles on.
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    true
                }
                () = self.resync_needed.notified() => false,
                _ = tick.tick() => {
                    let wanted = assigned.borrow().clone();
                    if !self.renew_and_heal(membership, &wanted, &mut healing).await {
                        continue;
                    }
                    true
                }
            };
            let targets = assigned.borrow_and_update().clone();
            self.reclaim(brokers, topics, &targets, fresh).await;
            self.renew_routes().await;
        }
    }

    /// Claims `targets` under every lock, retrying until it succeeds.
    async fn reclaim(&self, brokers: &str, topics: &[String], targets: &BTreeSet<i32>, fresh: bool) {
        let _all = self.locks.lock_all().await;
        self.ready.store(false, Ordering::Release);
        if fresh {
            tracing::info!(partitions = ?targets, "claiming the partitions the group assigned");
        } else {
            tracing::warn!("an append failed; claiming anew and reading the log's tail before serving commands");
        }
        loop {
            if !fresh && let Err(err) = self.log.renew_producer() {
                tracing::warn!(error = %err, "renewing the producer failed");
            }
            match self.claim(brokers, topics, targets, fresh).await {
                Ok(records) => {
                    metrics::counter!("write_model_resyncs_total").increment(1);
                    tracing::info!(records, "write model level with the log; serving commands");
                    break;
                }
                Err(err) if err.is::<crate::event_log::LogBehindModel>() => {
                    tracing::error!(error = %err, "the log holds less than the write model; reading it from offset 0");
                    self.replace_model(WriteModel::default()).await;
                }
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), "claiming or reading the log failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
        self.mark_ready();
    }

    async fn renew_routes(&self) {
        let Some(topic) = self.log.partitions().into_iter().map(|(topic, _)| topic).min() else { return };
        if let Err(err) = self.routes.renew(&self.served_epochs(&topic)).await {
            tracing::warn!(error = %err, "renewing the routing table failed; other instances may forward less");
        }
    }

    /// Renews this instance's routes, then looks for partitions nobody
    /// serves (no entry renewed for `STALE_AFTER`, for
    /// `UNSERVED_BEFORE_HEALING`): one assigned here but not served is
    /// claimed (true: claim now); otherwise this member rejoins the group,
    /// at most every `REJOIN_EVERY`, which
    /// on Tansu is what hands a dead member's partitions out again.
    async fn renew_and_heal(
        &self,
        membership: &crate::ownership::Membership,
        assigned: &BTreeSet<i32>,
        healing: &mut Healing,
    ) -> bool {
        self.renew_routes().await;
        if !self.is_ready() {
            return false;
        }
        let revoked =
            self.served.read().unwrap_or_else(std::sync::PoisonError::into_inner).iter().any(|p| !assigned.contains(p));
        if revoked {
            tracing::info!("serving partitions the group no longer assigns here; claiming what it assigns");
            return true;
        }
        let Ok(table) = self.routes.table().await else { return false };
        let count = self.log.partition_count().unwrap_or(0);
        let unserved: BTreeSet<i32> = (0..count)
            .filter(|p| !self.serves(*p) && table.get(p).is_none_or(|o| o.age >= crate::routing::STALE_AFTER))
            .collect();
        // A rebalance leaves partitions unserved for a few seconds; only one
        // unserved for longer than that is a partition nobody will serve.
        let now = std::time::Instant::now();
        healing.unserved.retain(|p, _| unserved.contains(p));
        for p in &unserved {
            healing.unserved.entry(*p).or_insert(now);
        }
        let lasting: BTreeSet<i32> = healing
            .unserved
            .iter()
            .filter(|(_, since)| since.elapsed() >= UNSERVED_BEFORE_HEALING)
            .map(|(p, _)| *p)
            .collect();
        if lasting.is_empty() {
            return false;
        }
        if lasting.iter().any(|p| assigned.contains(p)) {
            tracing::warn!(partitions = ?lasting, "partitions assigned here are served by nobody; claiming them");
            return true;
        }
        if healing.last_rejoin.is_none_or(|at| at.elapsed() >= REJOIN_EVERY) {
            tracing::warn!(partitions = ?lasting, "partitions are served by nobody; rejoining the group to have them handed out");
            metrics::counter!("command_api_group_rejoins_total").increment(1);
            healing.last_rejoin = Some(std::time::Instant::now());
            membership.rejoin();
        }
        false
    }

    pub async fn prune(&self) {
        self.write().prune(Utc::now());
        if let Err(err) = views::revocation::prune(&self.revocations).await {
            tracing::warn!(error = %err, "pruning expired revocation records failed; trying again later");
        }
    }

    /// The partition `route` names, if this instance serves it; an error
    /// naming the partition otherwise (the request is forwarded to its
    /// owner). `None` for a command any instance decides.
    fn owned_partition(&self, route: &Route) -> Result<Option<i32>, CommandError> {
        let (Route::Owner(key) | Route::OwnerReadingUsers(key)) = route else { return Ok(None) };
        let partition = self.log.partition_number(key).map_err(|_| CommandError::NotReady)?;
        if self.serves(partition) { Ok(Some(partition)) } else { Err(CommandError::NotOwner { partition }) }
    }

    /// Waits until the followed copy of `topic`'s partitions this instance
    /// does not serve has read up to their high watermarks as of now: a
    /// logout or a sign-up another owner acknowledged before this command
    /// arrived is then in the model. Nothing to wait for when it serves
    /// every partition (its own appends are folded before they are answered).
    async fn sync_unserved(&self, topic: Topic) -> Result<(), CommandError> {
        let name = self.log.topic_name(topic);
        let unserved: Vec<(String, i32)> =
            self.log.partitions().into_iter().filter(|(t, p)| *t == name && !self.serves(*p)).collect();
        if unserved.is_empty() {
            return Ok(());
        }
        self.follower.sync(unserved).await.map_err(unavailable)
    }

    fn ensure_ready(&self) -> Result<(), CommandError> {
        if self.is_ready() { Ok(()) } else { Err(CommandError::NotReady) }
    }

    pub fn session_policy(&self) -> SessionPolicy {
        self.sessions
    }

    /// Checks a verified token against the write model: the session exists,
    /// belongs to the user and is neither revoked nor expired.
    pub fn authenticate(&self, claims: &Claims) -> Result<(), CommandError> {
        self.ensure_ready()?;
        require_active_session(&self.read(), claims)
    }

    /// The answer to an earlier command of `caller` with the same
    /// `Idempotency-Key`, if this is a retry of one.
    fn earlier_answer(&self, caller: Uuid, ctx: &CommandContext) -> Result<Option<CommandOutcome>, CommandError> {
        let Some(key) = ctx.idempotency_key.as_deref() else { return Ok(None) };
        let model = self.read();
        let Some(IdempotentCommit { fingerprint, commit, position }) = model.idempotent_commit(caller, key, Utc::now())
        else {
            return Ok(None);
        };
        if fingerprint.is_some() && *fingerprint != ctx.fingerprint {
            return Err(CommandError::IdempotencyKeyReused);
        }
        metrics::counter!("idempotent_replays_total").increment(1);
        Ok(Some(CommandOutcome { answer: Answer::of_commit(commit), position: Some(position.clone()), retried: true }))
    }

    /// The one path of every command (see the module's doc). `decide` runs
    /// under the locks with the model read-locked; the events it returns are
    /// appended and recorded, or, when there are none, nothing is.
    async fn execute<F>(
        &self,
        caller: Caller<'_>,
        route: Route,
        locks: Vec<LockKey>,
        ctx: &CommandContext,
        decide: F,
    ) -> Result<(CommandOutcome, Vec<Envelope>), CommandError>
    where
        F: FnOnce(&WriteModel, DateTime<Utc>) -> Result<Decision, CommandError>,
    {
        let partition = self.owned_partition(&route)?;
        self.ensure_ready()?;
        let held = self.locks.lock(locks).await;
        // Again under the locks: a command that held them may have had an
        // unknown outcome meanwhile, and until the claim that follows, this
        // model may lack that command's record; or the partition moved.
        self.ensure_ready()?;
        if let Some(partition) = partition
            && !self.serves(partition)
        {
            return Err(CommandError::NotOwner { partition });
        }
        if matches!(route, Route::OwnerReadingUsers(_)) {
            self.sync_unserved(Topic::UserEvents).await?;
        }
        let retrier = match caller {
            Caller::Session(claims) => Some(claims.sub),
            Caller::User(id) => Some(id),
            Caller::EmailOwner(email) => self.read().email_owner(email),
        };
        if let Some(retrier) = retrier
            && let Some(outcome) = self.earlier_answer(retrier, ctx)?
        {
            return Ok((outcome, Vec::new()));
        }
        let decision = {
            let model = self.read();
            if let Caller::Session(claims) = caller {
                require_active_session(&model, claims)?;
            }
            decide(&model, Utc::now())?
        };
        // One record per command, on its aggregate's topic; none at all is
        // an answer too (a repeat that changes nothing).
        let Some(topic) = decision.events.first().map(Event::topic) else {
            return Ok((CommandOutcome::unchanged(), Vec::new()));
        };
        let Some(actor) = decision.actor.or(retrier) else {
            return Err(Rejection::invalid(ErrorCode::NothingToDo, "the command has no actor").into());
        };
        // Still under this command's locks, so nothing it decided on can
        // change meanwhile; only the limit can refuse it now.
        if let Some(slot) = decision.reserve {
            self.reserve_slot(slot).await?;
        }
        // Holds the locks: a command cancelled mid-append (client gone,
        // request timeout) fences this instance before they are released.
        let in_flight = FenceIfCancelled { service: self, armed: true, _locks: held };
        let committed =
            self.commit(topic, &decision.aggregate_id, decision.base_version, actor, decision.events, ctx).await;
        in_flight.disarm();
        let (envelopes, position) = committed?;
        Ok((CommandOutcome::committed(&envelopes, position), envelopes))
    }

    /// Wraps events in envelopes numbered after `base_version`, appends them
    /// as one record to `topic`, and returns once the follower has folded it
    /// into the write model. Fences this instance after any outcome that is
    /// unknown or does not count.
    async fn commit(
        &self,
        topic: Topic,
        aggregate_id: &str,
        base_version: u64,
        actor: Uuid,
        events: Vec<Event>,
        ctx: &CommandContext,
    ) -> Result<(Vec<Envelope>, Position), CommandError> {
        let now = Utc::now();
        let metadata = EventMetadata {
            actor: Some(actor),
            correlation_id: ctx.correlation_id.clone(),
            idempotency_key: ctx.idempotency_key.clone(),
            request_fingerprint: ctx.fingerprint.clone(),
        };
        let envelopes: Vec<Envelope> = events
            .into_iter()
            .zip(base_version + 1..)
            .map(|(event, version)| Envelope {
                event_id: Uuid::now_v7(),
                aggregate_id: aggregate_id.to_owned(),
                aggregate_version: version,
                occurred_at: now,
                metadata: metadata.clone(),
                event,
            })
            .collect();
        let topic_name = self.log.topic_name(topic);
        let partition = self.log.partition_of(&topic_name, aggregate_id).map_err(unavailable)?;
        let epoch = self.epoch_of(&topic_name, partition).ok_or(CommandError::NotReady)?;
        let position = match self.log.append(&topic_name, partition, epoch, &envelopes).await {
            Ok(position) => position,
            // A timed-out append may still have landed. Until the model is
            // re-read from the log behind a new marker (which fences that
            // record if it lands later), deciding on it could contradict
            // the log (say, a second account for one email).
            Err(err) => {
                self.fence_self();
                return Err(CommandError::OutcomeUnknown { detail: err.to_string() });
            }
        };
        // Acknowledged is not yet counted: a newer owner marker before it
        // makes every reader ignore it. Confirmed, the follower has folded
        // it into the model (`log_follower`), as any reader of the log would.
        if let Err(err) = self.follower.confirm(&position, epoch).await {
            metrics::counter!("appends_not_confirmed_total").increment(1);
            tracing::warn!(error = %err, "an acknowledged append does not count (or may not); not answering it");
            self.fence_self();
            return Err(match err {
                // It will never count: nothing was written.
                ConfirmError::Fenced { .. } => unavailable(err),
                ConfirmError::TimedOut { .. } => CommandError::OutcomeUnknown { detail: err.to_string() },
            });
        }
        self.announce_append();
        for envelope in &envelopes {
            metrics::counter!("events_appended_total", "type" => envelope.event_type()).increment(1);
        }
        Ok((envelopes, position))
    }
}

/// An append whose future is dropped before its outcome is known (the
/// request timed out, the client went away) may still land and count: the
/// instance must re-read the log behind a new marker before it decides
/// anything else.
struct FenceIfCancelled<'a> {
    service: &'a CommandService,
    armed: bool,
    /// Released after `drop` has fenced (fields drop after `Drop::drop`).
    _locks: crate::locks::Held,
}

impl FenceIfCancelled<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for FenceIfCancelled<'_> {
    fn drop(&mut self) {
        if self.armed {
            tracing::warn!("a command was cancelled while its append was in flight; claiming the partitions anew");
            self.service.fence_self();
        }
    }
}

fn unavailable(err: impl std::fmt::Display) -> CommandError {
    CommandError::Unavailable { dependency: "kafka", detail: err.to_string() }
}

impl CommandService {
    /// After an append whose outcome is unknown or does not count: stop
    /// serving until the resync claimed the partitions anew and read the
    /// log into the model (`resync_on_failure`).
    fn fence_self(&self) {
        self.ready.store(false, Ordering::Release);
        self.resync_needed.notify_one();
    }

    /// Tells idle projectors to fetch (`projector/src/wake.rs`). Best
    /// effort and off the request's path: a lost announcement costs a
    /// projector about a second of lag (its watermark poll), never a record.
    fn announce_append(&self) {
        let mut redis = self.redis.clone();
        let channel = self.keys.log_appended();
        tokio::spawn(async move {
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(&channel).arg(1);
            match tokio::time::timeout(std::time::Duration::from_secs(1), publish.query_async::<i64>(&mut redis)).await
            {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => tracing::debug!(error = %err, "announcing an append failed"),
                Err(_) => tracing::debug!("announcing an append timed out"),
            }
        });
    }
}

/// The session of `claims` exists, is the user's and is active.
fn require_active_session(model: &WriteModel, claims: &Claims) -> Result<(), CommandError> {
    let state = model.user(claims.sub).ok_or(CommandError::Unauthenticated)?;
    match state.sessions.get(&claims.jti) {
        Some(s) if s.is_active(Utc::now()) => Ok(()),
        _ => Err(CommandError::Unauthenticated),
    }
}
