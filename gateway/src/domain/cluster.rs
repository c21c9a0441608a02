//! The cluster's picture of itself, for operators (the console and its REST routes): every node
//! publishes a [`NodeReport`] to every node each [`REPORT_EVERY`], and each keeps the latest
//! one per node, so any node answers with the same picture. Counts of users and conversations
//! come from presence, which is cluster-wide already.
//!
//! Reports ride the bus like any event (topic `All`, no client hears them): in a cluster of
//! N nodes that is N/2 small messages a second on every node, the price Centrifugo pays too
//! for its node list.

use super::{Domain, DomainError};
use crate::metrics::METRICS;
use crate::presence::{ConversationPage, NodeStats, UserPresence};
use async_trait::async_trait;
use chrono::Utc;
use serde::Serialize;
use shared::node::NodeReport;
use shared::{ConversationId, Delivery, Event, NodeId, Topic, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a node reports to the others.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// A node not heard from for this long is shown stale (three missed reports).
const STALE_AFTER: Duration = Duration::from_secs(6);
/// A node not heard from for this long is forgotten (it left, or died and was reaped).
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Most conversations one page lists, each with its online users (one presence read each).
pub const MAX_ROOMS_PAGE: usize = 100;
/// Most users one presence page lists (one presence read each).
pub const MAX_PRESENCE_PAGE: usize = 200;

/// Whether the node takes new work; the server's readiness answers it.
#[async_trait]
pub trait Health: Send + Sync {
    /// Why the node does not take new work; `None` when it does.
    async fn not_ready(&self) -> Option<&'static str>;
}

/// The latest report of each node, with when it arrived (this node's clock).
#[derive(Default)]
pub(super) struct Reports(Mutex<HashMap<NodeId, (Instant, NodeReport)>>);

impl Reports {
    pub(super) fn record(&self, report: NodeReport) {
        let mut reports = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        reports.retain(|_, (at, _)| at.elapsed() < FORGET_AFTER);
        reports.insert(report.node_id.clone(), (Instant::now(), report));
    }

    fn latest(&self) -> HashMap<NodeId, (Duration, NodeReport)> {
        let reports = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        reports
            .iter()
            .filter(|(_, (at, _))| at.elapsed() < FORGET_AFTER)
            .map(|(id, (at, r))| (id.clone(), (at.elapsed(), r.clone())))
            .collect()
    }
}

/// One node as operators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// The node.
    pub node_id: NodeId,
    /// Its counts in presence (connections with a user, users, conversations); absent when
    /// presence does not list the node (it left, or its heartbeat expired).
    pub presence: Option<NodeStats>,
    /// Its latest report; absent until the first one arrives.
    pub report: Option<NodeReport>,
    /// Milliseconds since that report arrived here.
    pub report_age_ms: Option<u64>,
    /// Listed by presence, reporting, and ready.
    pub healthy: bool,
}

/// Every node of the cluster.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Nodes {
    /// Sorted by node id.
    pub nodes: Vec<NodeView>,
}

/// A page of online users with their presence.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresencePage {
    /// Online, visible users, ordered by id.
    pub users: Vec<UserPresence>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// A conversation with a joined connection, and who is in it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Room {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Visible users joined to it, on any node.
    pub online_users: Vec<UserId>,
}

/// A page of conversations with a joined connection.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomPage {
    /// Conversations and their online users, ordered by id within the page.
    pub rooms: Vec<Room>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

impl Domain {
    /// Reports this node to the cluster every [`REPORT_EVERY`] until the node stops.
    pub fn report_to_cluster(self: &Arc<Self>, node: NodeId, health: Arc<dyn Health>) {
        let domain = Arc::downgrade(self);
        let started_at = Utc::now();
        self.spawn_until_shutdown(async move {
            let mut every = tokio::time::interval(REPORT_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(domain) = domain.upgrade() else { return };
                let (connections, totals) = METRICS.totals();
                let report = NodeReport {
                    node_id: node.clone(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    started_at,
                    reported_at: Utc::now(),
                    not_ready: health.not_ready().await.map(str::to_owned),
                    connections,
                    totals,
                };
                let delivery = Delivery::to(Topic::All, Event::NodeReport(report));
                if let Err(e) = domain.bus.publish(delivery).await {
                    tracing::debug!(error = %e, "node report not published");
                }
            }
        });
    }

    /// Every node: presence's counts joined with the nodes' latest reports.
    pub async fn nodes(&self) -> Result<Nodes, DomainError> {
        let stats = self.presence.stats().await?;
        let mut reports = self.reports.latest();
        let mut nodes: Vec<NodeView> = stats
            .nodes
            .into_iter()
            .map(|stats| {
                let report = reports.remove(&stats.node_id);
                view(stats.node_id.clone(), Some(stats), report)
            })
            .collect();
        nodes.extend(reports.into_iter().map(|(id, report)| view(id, None, Some(report))));
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(Nodes { nodes })
    }

    /// Online users with their presence, a page at a time.
    pub async fn online_presence(&self, cursor: Option<&str>, limit: usize) -> Result<PresencePage, DomainError> {
        let page = self
            .presence
            .online_users(cursor, limit.clamp(1, MAX_PRESENCE_PAGE))
            .await?;
        let lookups = page.users.iter().map(|u| self.presence.user(u));
        let users = futures::future::try_join_all(lookups).await?;
        Ok(PresencePage {
            users,
            next_cursor: page.next_cursor,
        })
    }

    /// Conversations with a joined connection and their online users, a page at a time.
    pub async fn rooms(&self, cursor: Option<&str>, limit: usize) -> Result<RoomPage, DomainError> {
        let ConversationPage {
            mut conversations,
            next_cursor,
        } = self
            .presence
            .active_conversations(cursor, limit.clamp(1, MAX_ROOMS_PAGE))
            .await?;
        conversations.sort_unstable();
        let lookups = conversations.iter().map(|c| self.presence.conversation_online(c));
        let online = futures::future::try_join_all(lookups).await?;
        Ok(RoomPage {
            rooms: conversations
                .into_iter()
                .zip(online)
                .map(|(conversation_id, online_users)| Room {
                    conversation_id,
                    online_users,
                })
                .collect(),
            next_cursor,
        })
    }
}

fn view(node_id: NodeId, presence: Option<NodeStats>, report: Option<(Duration, NodeReport)>) -> NodeView {
    let age = report.as_ref().map(|(age, _)| *age);
    let report = report.map(|(_, r)| r);
    let healthy = presence.is_some()
        && age.is_some_and(|a| a < STALE_AFTER)
        && report.as_ref().is_some_and(|r| r.not_ready.is_none());
    NodeView {
        node_id,
        presence,
        report_age_ms: age.map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
        report,
        healthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::node::{ProtocolCounts, Totals};

    fn report(not_ready: Option<&str>) -> NodeReport {
        NodeReport {
            node_id: "n1".into(),
            version: "1.0.0".into(),
            started_at: Utc::now(),
            reported_at: Utc::now(),
            not_ready: not_ready.map(str::to_owned),
            connections: ProtocolCounts::default(),
            totals: Totals::default(),
        }
    }

    fn stats() -> NodeStats {
        NodeStats {
            node_id: "n1".into(),
            connections: 0,
            users: 0,
            rooms: 0,
            started_at: Utc::now(),
        }
    }

    #[test]
    fn healthy_means_listed_fresh_and_ready() {
        let fresh = Duration::from_secs(1);
        let stale = STALE_AFTER + Duration::from_millis(1);
        let cases = [
            (Some(stats()), Some((fresh, report(None))), true),
            (Some(stats()), Some((stale, report(None))), false),
            (Some(stats()), Some((fresh, report(Some("draining")))), false),
            (None, Some((fresh, report(None))), false),
            (Some(stats()), None, false),
        ];
        for (presence, report, healthy) in cases {
            let listed = presence.is_some();
            let view = view("n1".into(), presence, report);
            assert_eq!(view.healthy, healthy, "{view:?} (listed: {listed})");
        }
    }

    #[test]
    fn reports_keep_the_latest_per_node() {
        let reports = Reports::default();
        let mut first = report(None);
        first.totals.connects = 1;
        reports.record(first);
        let mut second = report(None);
        second.totals.connects = 2;
        reports.record(second);
        let mut other = report(None);
        other.node_id = "n2".into();
        reports.record(other);
        let latest = reports.latest();
        assert_eq!(latest.len(), 2);
        assert_eq!(latest.get(&NodeId::from("n1")).map(|(_, r)| r.totals.connects), Some(2));
    }
}
