//! The publisher: `POST /api/conversations/:id/emit` at a fixed rate on alternating nodes.

use crate::stats::{HIST_MAX_US, Shared, histogram};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Posts events to the nodes' REST emit.
pub struct Publisher {
    pub http: Client<HttpConnector, Full<Bytes>>,
    pub nodes: Vec<String>,
    pub api_key: String,
    pub rooms: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Published {
    pub sent: u64,
    pub failed: u64,
    pub expected: u64,
    pub post_latency: Option<Histogram<u64>>,
    pub max_lag_us: u64,
    pub first_error: Option<String>,
}

impl Publisher {
    /// One POST: which room it went to, and whether the node accepted it.
    pub async fn post(&self, shared: &Shared, seq: u64) -> (usize, Result<u64>) {
        let rooms = self.rooms.len() as u64;
        let room = (seq % rooms) as usize;
        let node = ((seq / rooms) % self.nodes.len() as u64) as usize;
        let uri = format!("{}/api/conversations/{}/emit", self.nodes[node], self.rooms[room]);
        let sent = shared.now_us();
        let body = format!("{{\"event\":\"bench\",\"data\":{{\"t\":{sent},\"seq\":{seq}}}}}");
        let request = hyper::Request::post(uri)
            .header("content-type", "application/json")
            .header("x-api-key", &self.api_key)
            .body(Full::new(Bytes::from(body)));
        let result = async {
            let request = request.context("build request")?;
            let response = self.http.request(request).await.context("POST emit")?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .context("read response")?
                .to_bytes();
            if !status.is_success() {
                bail!("emit answered {status}: {}", String::from_utf8_lossy(&body));
            }
            Ok(shared.now_us().saturating_sub(sent))
        }
        .await;
        (room, result)
    }

    /// Publishes `count` messages at `rate`/s starting at seq `first`, each in its own task.
    pub async fn run(
        self: Arc<Self>,
        shared: Arc<Shared>,
        rate: f64,
        count: u64,
        first: u64,
        max_inflight: usize,
    ) -> Published {
        let mut out = Published::default();
        let mut post_latency = histogram().ok();
        let inflight = Arc::new(Semaphore::new(max_inflight.max(1)));
        let mut tasks: JoinSet<(usize, Result<u64>)> = JoinSet::new();
        let t0 = tokio::time::Instant::now();
        let mut record = |out: &mut Published, done: (usize, Result<u64>)| match done.1 {
            Ok(us) => {
                out.expected += shared.room_members[done.0].load(Ordering::Relaxed);
                if let Some(h) = post_latency.as_mut() {
                    h.saturating_record(us.clamp(1, HIST_MAX_US));
                }
            }
            Err(e) => {
                out.failed += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(format!("{e:#}"));
                }
            }
        };
        for k in 0..count {
            let due = t0 + Duration::from_secs_f64(k as f64 / rate);
            tokio::time::sleep_until(due).await;
            let lag = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
            out.max_lag_us = out.max_lag_us.max(lag);
            let Ok(permit) = inflight.clone().acquire_owned().await else {
                break;
            };
            let me = self.clone();
            let shared = shared.clone();
            tasks.spawn(async move {
                let done = me.post(&shared, first + k).await;
                drop(permit);
                done
            });
            out.sent += 1;
            while let Some(Ok(done)) = tasks.try_join_next() {
                record(&mut out, done);
            }
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(done) => record(&mut out, done),
                Err(_) => out.failed += 1,
            }
        }
        out.post_latency = post_latency;
        out
    }
}
