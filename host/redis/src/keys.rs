//! Redis key names: the `Keys` of one prefix, the consumer group's name, the
//! statuses that have an index and the header fields a listing reads. The
//! only module that knows them; the layout is described in the crate doc.

use flowhost_core::state::{FlowId, FlowStatus};

/// Every status, each with its own index.
pub(crate) const ALL_STATUSES: [FlowStatus; 6] = [
    FlowStatus::Pending,
    FlowStatus::Running,
    FlowStatus::Completed,
    FlowStatus::Failed,
    FlowStatus::Paused,
    FlowStatus::Cancelled,
];

/// The header fields of a `FlowSummary`, in the order `decode_summary` reads.
pub(crate) const SUMMARY_FIELDS: [&str; 6] = [
    "flow_name",
    "status",
    "current_step",
    "started_at",
    "completed_at",
    "total_execution_time",
];

/// The consumer group of the submission stream.
pub(crate) const GROUP: &str = "flowhost";

/// The key names under one prefix.
#[derive(Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }
    pub(crate) fn flow(&self, id: FlowId) -> String {
        format!("{}flow:{{{id}}}", self.prefix)
    }
    pub(crate) fn steps(&self, id: FlowId) -> String {
        format!("{}flow:{{{id}}}:steps", self.prefix)
    }
    pub(crate) fn lease(&self, id: FlowId) -> String {
        format!("{}flow:{{{id}}}:lease", self.prefix)
    }
    pub(crate) fn queue(&self) -> String {
        format!("{}queue", self.prefix)
    }
    pub(crate) fn started(&self) -> String {
        format!("{}flows:started", self.prefix)
    }
    pub(crate) fn by_name(&self, name: &str) -> String {
        format!("{}flows:name:{name}", self.prefix)
    }
    pub(crate) fn by_status(&self, status: FlowStatus) -> String {
        format!("{}flows:status:{status}", self.prefix)
    }
    /// The indexes of every status but `status`, in `ALL_STATUSES` order.
    pub(crate) fn other_statuses(&self, status: FlowStatus) -> impl Iterator<Item = String> + '_ {
        ALL_STATUSES
            .into_iter()
            .filter(move |s| *s != status)
            .map(|s| self.by_status(s))
    }
    pub(crate) fn idempotency(&self, key: &str) -> String {
        format!("{}idem:{{{key}}}", self.prefix)
    }
    pub(crate) fn result(&self, key: &str) -> String {
        format!("{}cache:{{{key}}}", self.prefix)
    }
    /// The host computing a result for the hosts sharing the cache.
    pub(crate) fn result_lead(&self, key: &str) -> String {
        format!("{}cache:{{{key}}}:lead", self.prefix)
    }
    pub(crate) fn results_of_plugin(&self, plugin: &str) -> String {
        format!("{}cache:plugin:{plugin}", self.prefix)
    }
    pub(crate) fn results_of_flow(&self, flow: &str) -> String {
        format!("{}cache:flow:{flow}", self.prefix)
    }
    /// A blob's meta hash; the blob's hash is its hash tag.
    pub(crate) fn blob(&self, hex: &str) -> String {
        format!("{}blob:{{{hex}}}", self.prefix)
    }
    /// A blob's holds, in the slot of its meta.
    pub(crate) fn blob_holds(&self, hex: &str) -> String {
        format!("{}blob:{{{hex}}}:holds", self.prefix)
    }
    /// Chunk `n` of the bytes stored by upload `upload`: every chunk of one
    /// upload shares its hash tag.
    pub(crate) fn blob_chunk(&self, upload: &str, n: u64) -> String {
        format!("{}blobdata:{{{upload}}}:{n}", self.prefix)
    }
    /// Every chunk key of an upload of `count` chunks.
    pub(crate) fn blob_chunks(&self, upload: &str, count: u64) -> Vec<String> {
        (0..count).map(|n| self.blob_chunk(upload, n)).collect()
    }
    /// The set of every stored blob's hash, for the retention sweep.
    pub(crate) fn blobs(&self) -> String {
        format!("{}blobs", self.prefix)
    }
}
