//! Reads of the start, name and status indexes: listing flows newest first,
//! page by page with their summaries, pruning the finished flows that
//! finished before a cutoff, and repairing status index lines that disagree
//! with their flow's header (left by a host that died between a Cluster's
//! flow script and its index commands).

use chrono::{DateTime, Utc};
use flowhost_core::state::{FlowId, FlowStatus, FlowSummary, ListFilter, StateStore, StoreError};
use redis::Cmd;

use crate::codec::{decode_summary, parse_flow_id, unavailable};
use crate::keys::{ALL_STATUSES, Keys, SUMMARY_FIELDS};
use crate::store::RedisStore;

/// The index a listing reads, and the range of it, newest first.
struct Pages {
    index: String,
    /// Read by score (start time) in `min..max`, or by rank.
    by_score: bool,
    min: String,
    max: String,
    page: isize,
}

impl Pages {
    fn new(keys: &Keys, filter: &ListFilter) -> Self {
        let index = match (&filter.status, &filter.flow_name) {
            (Some(status), _) => keys.by_status(*status),
            (None, Some(name)) => keys.by_name(name),
            (None, None) => keys.started(),
        };
        // The name and start indexes are scored by start time, so a time
        // range is read from Redis directly; the status index is scored by
        // the time of the change, so there the range is checked per line.
        let by_score = filter.status.is_none();
        let max = filter
            .started_before
            .map_or("+inf".to_owned(), |t| format!("({}", t.timestamp_millis()));
        let min = filter
            .started_after
            .map_or("-inf".to_owned(), |t| t.timestamp_millis().to_string());
        Pages {
            index,
            by_score,
            min,
            max,
            page: filter.limit.clamp(1, 1000) as isize,
        }
    }

    /// The command that reads the page starting at `offset`.
    fn at(&self, offset: isize) -> Cmd {
        if self.by_score {
            let mut c = redis::cmd("ZREVRANGEBYSCORE");
            c.arg(&self.index)
                .arg(&self.max)
                .arg(&self.min)
                .arg("LIMIT")
                .arg(offset)
                .arg(self.page);
            c
        } else {
            let mut c = redis::cmd("ZREVRANGE");
            c.arg(&self.index).arg(offset).arg(offset + self.page - 1);
            c
        }
    }
}

impl RedisStore {
    /// `StateStore::list_flows`: pages of the index, each with one pipeline
    /// of `HMGET`s for the summaries, until the limit is reached.
    pub(crate) async fn list(&self, filter: &ListFilter) -> Result<Vec<FlowSummary>, StoreError> {
        let pages = Pages::new(&self.keys, filter);
        let mut out = Vec::new();
        let mut offset = 0isize;
        while out.len() < filter.limit {
            let ids: Vec<String> = pages
                .at(offset)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            if ids.is_empty() {
                break;
            }
            offset += ids.len() as isize;
            for (id, row) in self.summary_rows(&ids).await? {
                // An index line whose header expired or was deleted is skipped.
                let Some(summary) = decode_summary(id, row)? else {
                    continue;
                };
                if !filter.matches(&summary) {
                    continue;
                }
                out.push(summary);
                if out.len() == filter.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The summary fields of the flows an index page names, undecoded.
    async fn summary_rows(
        &self,
        ids: &[String],
    ) -> Result<Vec<(FlowId, Vec<Option<String>>)>, StoreError> {
        let mut pipe = redis::pipe();
        let mut parsed = Vec::with_capacity(ids.len());
        for raw in ids {
            let id = parse_flow_id(raw, "index member is not a flow id")?;
            pipe.cmd("HMGET")
                .arg(self.keys.flow(id))
                .arg(&SUMMARY_FIELDS[..]);
            parsed.push(id);
        }
        let rows: Vec<Vec<Option<String>>> = self.conn.query(&pipe).await.map_err(unavailable)?;
        Ok(parsed.into_iter().zip(rows).collect())
    }

    /// `StateStore::prune`: deletes the finished flows whose status index
    /// line is older than `cutoff`; returns how many.
    pub(crate) async fn prune_finished(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut removed = 0;
        for status in [
            FlowStatus::Completed,
            FlowStatus::Failed,
            FlowStatus::Cancelled,
        ] {
            // The status index is scored by when a flow entered the status:
            // for these, when it finished.
            let index = self.keys.by_status(status);
            let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(format!("({}", cutoff.timestamp_millis()))
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            for raw in ids {
                let Ok(id) = raw.parse::<FlowId>() else {
                    continue;
                };
                if self.delete_flow(id).await? {
                    removed += 1;
                } else {
                    // Its keys expired already: drop the index lines.
                    let mut pipe = redis::pipe();
                    pipe.zrem(&index, &raw).ignore();
                    pipe.zrem(self.keys.started(), &raw).ignore();
                    self.conn.run(pipe).await?;
                }
            }
        }
        Ok(removed)
    }

    /// `StateStore::repair_indexes`: every line of each status index, a
    /// page at a time, against its flow's header: a line whose flow is in
    /// another status moves to that status's index (scored by the flow's
    /// end when it finished, else keeping its score), and a line whose flow
    /// is gone is dropped. A flow whose status changes meanwhile may be put
    /// out of step again; its own index commands, or the next repair, put it
    /// right. Returns how many lines were fixed.
    pub(crate) async fn repair_status_index(&self) -> Result<u64, StoreError> {
        const PAGE: isize = 500;
        let mut fixed = 0;
        for status in ALL_STATUSES {
            let index = self.keys.by_status(status);
            let mut offset = 0isize;
            loop {
                let page: Vec<(String, f64)> = redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(offset)
                    .arg(offset + PAGE - 1)
                    .arg("WITHSCORES")
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(unavailable)?;
                if page.is_empty() {
                    break;
                }
                let moved = self.repair_page(&index, status, &page).await?;
                fixed += moved;
                offset += page.len() as isize - moved as isize;
            }
        }
        Ok(fixed)
    }

    /// Fixes the lines of one page of `index` (the index of `status`) whose
    /// flow disagrees; returns how many left the index.
    async fn repair_page(
        &self,
        index: &str,
        status: FlowStatus,
        page: &[(String, f64)],
    ) -> Result<u64, StoreError> {
        let mut pipe = redis::pipe();
        for (raw, _) in page {
            let id = parse_flow_id(raw, "index member is not a flow id")?;
            pipe.cmd("HMGET")
                .arg(self.keys.flow(id))
                .arg("status")
                .arg("completed_at");
        }
        let headers: Vec<(Option<String>, Option<String>)> =
            self.conn.query(&pipe).await.map_err(unavailable)?;
        let mut fix = redis::pipe();
        let mut moved = 0;
        for ((raw, score), (actual, completed_at)) in page.iter().zip(headers) {
            let actual = actual.and_then(|s| s.parse::<FlowStatus>().ok());
            if actual == Some(status) {
                continue;
            }
            if let Some(actual) = actual {
                let ended = completed_at
                    .filter(|_| actual.is_finished())
                    .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                    .map(|t| t.timestamp_millis() as f64);
                fix.zadd(self.keys.by_status(actual), raw, ended.unwrap_or(*score))
                    .ignore();
            }
            fix.zrem(index, raw).ignore();
            moved += 1;
        }
        if moved > 0 {
            self.conn.run(fix).await?;
        }
        Ok(moved)
    }
}
