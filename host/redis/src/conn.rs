//! The connection: one multiplexed connection to a single server (a
//! `ConnectionManager`, which reconnects by itself) or to a Cluster, and the
//! pipeline helpers that run the same commands on either (atomically on one
//! server, command by command across a Cluster's slots).

use std::time::Duration;

use flowhost_core::state::StoreError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture};

use crate::codec::unavailable;
use crate::config::RedisStoreConfig;

/// A connection to one server or to a Cluster; both multiplexed.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Connects to the server, or to the Cluster's seed nodes, once.
    pub(crate) async fn connect(config: &RedisStoreConfig) -> Result<Self, StoreError> {
        if config.cluster {
            let seeds: Vec<&str> = config.url.split(',').map(str::trim).collect();
            let client = redis::cluster::ClusterClientBuilder::new(seeds)
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.response_timeout)
                .retries(1)
                .build()
                .map_err(unavailable)?;
            return Ok(Conn::Cluster(
                client.get_async_connection().await.map_err(unavailable)?,
            ));
        }
        let client = redis::Client::open(config.url.as_str()).map_err(unavailable)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.connect_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Conn::Single(
            client
                .get_connection_manager_with_config(manager_config)
                .await
                .map_err(unavailable)?,
        ))
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// `SET key value NX GET PX ttl`: sets `key` unless it exists, in one
    /// round trip, and answers the value it held instead (`None`: it is set).
    pub(crate) async fn set_nx_get(
        &self,
        key: String,
        value: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<String>, RedisError> {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.clone())
            .await
    }

    /// Runs a pipeline: as one MULTI/EXEC on one server (a header field and
    /// its status index never disagree); on a Cluster, whose keys live in
    /// many slots, command by command.
    pub(crate) async fn run(&self, mut pipe: Pipeline) -> Result<(), StoreError> {
        if !self.is_cluster() {
            pipe.atomic();
        }
        self.exec(&pipe).await.map_err(unavailable)
    }

    /// Runs a pipeline, replies dropped: one round trip on one server (not a
    /// transaction); on a Cluster, one command at a time.
    pub(crate) async fn exec(&self, pipe: &Pipeline) -> Result<(), RedisError> {
        if self.is_cluster() {
            return self.each(pipe).await.map(drop);
        }
        pipe.exec_async(&mut self.clone()).await
    }

    /// A pipeline's replies: one round trip on one server; on a Cluster,
    /// where a pipeline may not cross slots, one command at a time. (Replies
    /// of commands marked `ignore` are kept on a Cluster: callers that query
    /// do not mark any.)
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &Pipeline,
    ) -> Result<T, RedisError> {
        if self.is_cluster() {
            return Ok(redis::from_redis_value(redis::Value::Array(
                self.each(pipe).await?,
            ))?);
        }
        pipe.query_async(&mut self.clone()).await
    }

    async fn each(&self, pipe: &Pipeline) -> Result<Vec<redis::Value>, RedisError> {
        let mut replies = Vec::new();
        for cmd in pipe.cmd_iter() {
            replies.push(cmd.query_async(&mut self.clone()).await?);
        }
        Ok(replies)
    }
}
