//! Departures in a cluster: this node's presence heartbeat, the reaper of dead nodes, the
//! sweeper of departures nobody settled, and the announcements they all cause.
//!
//! Three tasks, so that none can starve another: the heartbeat only refreshes this node; the
//! reaper claims dead nodes and drops their connections a chunk per Redis call; the announcer
//! publishes what the reaper found from a bounded queue, many PUBLISHes in flight at once. A
//! reaper with a lot to announce waits for the announcer, never the heartbeat.

use super::{Domain, roster_entry};
use crate::bus::{Bus, BusError};
use crate::metrics::METRICS;
use crate::presence::{Claim, Presence};
use chrono::Utc;
use futures::StreamExt;
use shared::event::{Membership, PresenceInfo, RosterDiff};
use shared::{ConversationId, Delivery, Event, Status, Topic, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Connections dropped per reap call: each costs Redis a few key operations per join.
const REAP_CHUNK: usize = 250;
/// Members read per circle-page call.
const CIRCLE_PAGE: usize = 1000;
/// Unsettled departures settled per sweep call.
const SWEEP_CHUNK: usize = 250;
/// Deliveries handed to the announcer at a time.
const BATCH: usize = 512;
/// Batches waiting for the announcer; beyond this the reaper waits.
const QUEUE: usize = 16;
/// Topics published to at once; fred pipelines their PUBLISHes on one connection.
const IN_FLIGHT: usize = 64;

/// Starts the heartbeat, the reaper and the announcer.
pub(super) fn spawn(
    presence: Arc<dyn Presence>,
    bus: Arc<dyn Bus>,
    every: Duration,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) {
    let (tx, rx) = mpsc::channel(QUEUE);
    tasks.spawn(heartbeat(presence.clone(), every, shutdown.clone()));
    tasks.spawn(reaper(presence, Outbox::Queue(tx), every, shutdown.clone()));
    tasks.spawn(announcer(bus, rx, shutdown));
}

/// Where announcements go: the announcer's queue, or straight to the bus (a departing node,
/// whose tasks are stopping).
enum Outbox {
    Queue(mpsc::Sender<Vec<Delivery>>),
    Direct(Arc<dyn Bus>),
}

impl Outbox {
    async fn send(&self, batch: Vec<Delivery>) {
        if batch.is_empty() {
            return;
        }
        match self {
            // Closed only at shutdown, when nothing is announced any more.
            Outbox::Queue(tx) => tx.send(batch).await.unwrap_or(()),
            Outbox::Direct(bus) => {
                if let Err(e) = publish_all(bus.as_ref(), batch).await {
                    tracing::debug!(error = %e, "departure not announced");
                }
            }
        }
    }
}

/// The user an event is about, when it is about one.
fn subject(event: &Event) -> Option<&UserId> {
    match event {
        Event::UserOffline(p) | Event::UserOnline(p) | Event::PresenceChanged(p) => Some(&p.user_id),
        Event::MemberLeft(m) => Some(&m.user_id),
        Event::RosterChanged(r) => r.leaves.first().or(r.joins.first()).map(|e| &e.user_id),
        _ => None,
    }
}

/// Publishes deliveries with many in flight at once. Deliveries about one user to one topic
/// keep their order (a presence-list leave before its member left); events about different
/// users have no order to keep, so a reap's thousands of leaves in one conversation do not
/// wait for each other. Every delivery is attempted; the first failure is answered.
pub(super) async fn publish_all(bus: &dyn Bus, deliveries: Vec<Delivery>) -> Result<(), BusError> {
    let mut index: HashMap<(Topic, Option<UserId>), usize> = HashMap::new();
    let mut groups: Vec<Vec<Delivery>> = Vec::new();
    for d in deliveries {
        let key = (d.topic.clone(), subject(&d.event).cloned());
        match index.get(&key) {
            Some(&i) => groups[i].push(d),
            None => {
                index.insert(key, groups.len());
                groups.push(vec![d]);
            }
        }
    }
    let failures: Vec<BusError> = futures::stream::iter(groups)
        .map(|group| async move {
            let mut failed = None;
            for d in group {
                if let Err(e) = bus.publish(d).await {
                    failed.get_or_insert(e);
                }
            }
            failed
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    failures.into_iter().next().map_or(Ok(()), Err)
}

pub(super) fn member_left(conversation: ConversationId, user: UserId) -> Delivery {
    let event = Event::MemberLeft(Membership {
        conversation_id: conversation.clone(),
        user_id: user.clone(),
    });
    Delivery::to(Topic::Conversation(conversation), event).except(user)
}

fn offline(user: &UserId) -> Event {
    Event::UserOffline(PresenceInfo {
        user_id: user.clone(),
        status: Status::Offline,
        last_seen: Some(Utc::now()),
    })
}

async fn heartbeat(presence: Arc<dyn Presence>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match presence.heartbeat().await {
            Ok(_) => METRICS.heartbeat_done(),
            Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
        }
    }
}

async fn reaper(presence: Arc<dyn Presence>, outbox: Outbox, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let pass = async {
            match presence.claim_dead().await {
                Ok(claims) => {
                    METRICS.presence_reaped_nodes.inc_by(claims.len() as u64);
                    for claim in claims {
                        reap(presence.as_ref(), &claim, &outbox).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "dead nodes not claimed"),
            }
            sweep(presence.as_ref(), &outbox).await;
            if let Ok(stats) = presence.stats().await {
                METRICS.presence_nodes.set(stats.nodes.len() as i64);
            }
        };
        // A claim abandoned here is taken over by another node once its lease runs out.
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = pass => {}
        }
    }
}

async fn announcer(bus: Arc<dyn Bus>, mut rx: mpsc::Receiver<Vec<Delivery>>, shutdown: CancellationToken) {
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => return,
            b = rx.recv() => match b {
                Some(b) => b,
                None => return,
            },
        };
        if let Err(e) = publish_all(bus.as_ref(), batch).await {
            tracing::debug!(error = %e, "departure not announced");
        }
    }
}

/// Drops a claim's connections a chunk at a time, announcing presence-list leaves and member
/// left per chunk, then *user offline* to the contacts of every user who left with it.
async fn reap(presence: &dyn Presence, claim: &Claim, outbox: &Outbox) {
    let mut departed: Vec<(UserId, Vec<String>)> = Vec::new();
    let mut reaped = 0;
    loop {
        let chunk = match presence.reap(claim, REAP_CHUNK).await {
            Ok(chunk) => chunk,
            Err(e) => {
                // The rest waits for the next pass, here or (after the lease) on another node.
                tracing::warn!(error = %e, "reap interrupted");
                break;
            }
        };
        reaped += chunk.departures.len();
        METRICS.presence_reaped.inc_by(chunk.departures.len() as u64);
        let mut batch = Vec::new();
        let now = Utc::now();
        for d in chunk.departures {
            if d.status != Status::Offline {
                for conversation in &d.joined {
                    let event = Event::RosterChanged(RosterDiff {
                        conversation_id: conversation.clone(),
                        joins: Vec::new(),
                        leaves: vec![roster_entry(&d.conn, &d.user, d.status, now)],
                    });
                    batch.push(Delivery::to(Topic::Conversation(conversation.clone()), event));
                }
            }
            for conversation in d.left {
                batch.push(member_left(conversation, d.user.clone()));
            }
            if let Some(circles) = d.offline_circles {
                departed.push((d.user, circles));
            }
        }
        outbox.send(batch).await;
        if chunk.done {
            break;
        }
    }
    if reaped > 0 {
        tracing::info!(departures = reaped, claim = %claim.0, "reaped connections of a dead node");
    }
    announce_offline(presence, departed, outbox).await;
}

/// Settles departures nobody settled in time and announces them.
async fn sweep(presence: &dyn Presence, outbox: &Outbox) {
    let mut departed = Vec::new();
    loop {
        let rows = match presence.sweep_lingering(SWEEP_CHUNK).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "lingering departures not swept");
                break;
            }
        };
        let n = rows.len();
        departed.extend(rows.into_iter().filter(|l| l.visible).map(|l| (l.user, l.circles)));
        if n < SWEEP_CHUNK {
            break;
        }
    }
    announce_offline(presence, departed, outbox).await;
}

/// Tells each connected member of the departed users' circles, once per (user, member): every
/// circle is read once, a page per call, however many departed users share it.
async fn announce_offline(presence: &dyn Presence, departed: Vec<(UserId, Vec<String>)>, outbox: &Outbox) {
    let mut by_circle: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (_, circles)) in departed.iter().enumerate() {
        for circle in circles {
            by_circle.entry(circle.as_str()).or_default().push(i);
        }
    }
    // Only users in several circles can meet the same member twice.
    let mut told: Vec<Option<HashSet<UserId>>> = departed
        .iter()
        .map(|(_, circles)| (circles.len() > 1).then(HashSet::new))
        .collect();
    let events: Vec<Event> = departed.iter().map(|(user, _)| offline(user)).collect();
    for (circle, users) in by_circle {
        // A scan may return a member twice.
        let mut met: HashSet<UserId> = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match presence.circle_page(circle, cursor.as_deref(), CIRCLE_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, circle, "user offline not announced to a circle");
                    break;
                }
            };
            let mut batch = Vec::new();
            for member in page.members {
                if !met.insert(member.clone()) {
                    continue;
                }
                for &i in &users {
                    if departed[i].0 == member || told[i].as_mut().is_some_and(|t| !t.insert(member.clone())) {
                        continue;
                    }
                    batch.push(Delivery::to(Topic::User(member.clone()), events[i].clone()));
                    if batch.len() >= BATCH {
                        outbox.send(std::mem::take(&mut batch)).await;
                    }
                }
            }
            outbox.send(batch).await;
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
}

impl Domain {
    /// Leaves the cluster politely once this node's connections are closed: its remaining
    /// presence entries go, and the departures they cause are announced.
    pub async fn depart(&self) {
        match self.presence.depart().await {
            Ok(claims) => {
                let outbox = Outbox::Direct(self.bus.clone());
                for claim in claims {
                    reap(self.presence.as_ref(), &claim, &outbox).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence entries left to expire with their TTL"),
        }
    }

    pub(super) fn settle_after_grace(&self, user: UserId, announce: bool) {
        let presence = self.presence.clone();
        let bus = self.bus.clone();
        let grace = self.rules.offline_grace;
        let span = tracing::debug_span!("offline_grace", user = %user);
        // Not cancelled by shutdown: a draining node still settles its users' departures.
        self.tasks.spawn(
            async move {
                tokio::time::sleep(grace).await;
                let contacts = match presence.settle_offline(&user).await {
                    Ok(Some(contacts)) if announce => contacts,
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "offline not settled; the sweeper will");
                        return;
                    }
                };
                let last_seen = presence.user(&user).await.ok().and_then(|p| p.last_seen);
                let event = Event::UserOffline(PresenceInfo {
                    user_id: user,
                    status: Status::Offline,
                    last_seen: last_seen.or_else(|| Some(Utc::now())),
                });
                let deliveries = contacts
                    .into_iter()
                    .map(|contact| Delivery::to(Topic::User(contact), event.clone()))
                    .collect();
                if let Err(e) = publish_all(bus.as_ref(), deliveries).await {
                    tracing::debug!(error = %e, "user offline not published to every contact");
                }
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod scale;
