//! Asking the live nodes over their gateway service (the controller's only route to what
//! runs on them): process lists, crash logs, kills. Answers are gathered concurrently and
//! a node that does not answer in time is named in the reply rather than failing it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rebeam_proto::v1 as pb;
use rebeam_proto::v1::gateway_service_client::GatewayServiceClient;
use tonic::transport::Channel;

use crate::auth::BearerInjector;
use crate::core::Core;

/// How long one node may take to answer before it is reported missing.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(3);

/// Nodes asked for their stats at once by the sampler (a large cluster is asked in waves).
pub const STATS_CONCURRENCY: usize = 32;

/// What the live nodes answered, and which did not.
pub struct Gathered<T> {
    /// Answers by node id.
    pub answers: Vec<(String, T)>,
    /// Nodes that failed or timed out, with why.
    pub missing: Vec<(String, String)>,
}

/// Cached channels to the nodes' gateways.
pub struct NodeClients {
    core: Arc<Core>,
    dialer: rebeam_tls::Dialer,
    bearer: BearerInjector,
    channels: Mutex<HashMap<String, Channel>>,
}

type Client =
    GatewayServiceClient<tonic::service::interceptor::InterceptedService<Channel, BearerInjector>>;

impl NodeClients {
    /// Clients of `core`'s live nodes: over the cluster's TLS with this member's
    /// certificate when TLS is on, else with the node secret (the cluster secret when there
    /// is none), the credential nodes accept as a member's.
    pub fn new(core: Arc<Core>) -> Self {
        let dialer = rebeam_tls::Dialer::new(core.config.tls.clone());
        // Nodes given the node secret no longer know the cluster secret; and a node must
        // never receive the cluster secret, which would let its app code administer the
        // cluster.
        let credential = if core.config.node_secret.is_empty() {
            &core.config.secret
        } else {
            &core.config.node_secret
        };
        let bearer = BearerInjector::for_member(credential, &dialer);
        NodeClients {
            core,
            dialer,
            bearer,
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, address: &str) -> Result<Client, String> {
        let channel = {
            let mut channels = self.channels.lock();
            match channels.get(address) {
                Some(c) => c.clone(),
                None => {
                    let c = self
                        .dialer
                        .channel(address, |e| e.connect_timeout(NODE_TIMEOUT))
                        .map_err(|e| format!("bad node address {address:?}: {e}"))?;
                    channels.insert(address.to_string(), c.clone());
                    c
                }
            }
        };
        Ok(
            GatewayServiceClient::with_interceptor(channel, self.bearer.clone())
                .max_decoding_message_size(256 << 20),
        )
    }

    /// Live nodes: id and gateway address.
    pub fn live(&self) -> Vec<(String, String)> {
        let a = self.core.shared.applied.read();
        a.state
            .nodes
            .values()
            .filter(|n| n.alive)
            .map(|n| (n.id.clone(), n.address.clone()))
            .collect()
    }

    /// The address of live node `node`.
    pub fn address_of(&self, node: &str) -> Option<String> {
        self.live()
            .into_iter()
            .find(|(id, _)| id == node)
            .map(|(_, a)| a)
    }

    /// Every live node's process list (with its supervisors' reports).
    pub async fn processes(&self, app: &str) -> Gathered<pb::ListProcessesReply> {
        let request = pb::ListProcessesRequest {
            app: app.to_string(),
            query: None,
        };
        self.list(self.live(), request).await
    }

    /// `request` (a whole list, or a query's page) answered by each of `nodes` (id and
    /// address).
    pub async fn list(
        &self,
        nodes: Vec<(String, String)>,
        request: pb::ListProcessesRequest,
    ) -> Gathered<pb::ListProcessesReply> {
        let calls = nodes.into_iter().map(|(id, address)| {
            let request = request.clone();
            async move {
                let r = async {
                    let mut c = self.client(&address)?;
                    answer(c.list_processes(request)).await
                }
                .await;
                (id, r)
            }
        });
        gather(futures::future::join_all(calls).await)
    }

    /// Every live node's shared tables, with at most `rows` preview entries each.
    pub async fn tables(&self, rows: u32) -> Gathered<Vec<pb::TableInfo>> {
        let calls = self.live().into_iter().map(|(id, address)| async move {
            let r = async {
                let mut c = self.client(&address)?;
                let reply = answer(c.list_tables(pb::ListTablesRequest { preview_rows: rows }));
                Ok::<_, String>(reply.await?.tables)
            }
            .await;
            (id, r)
        });
        gather(futures::future::join_all(calls).await)
    }

    /// The kept log entries of `app` on every live node (not followed).
    pub async fn logs(&self, app: &str) -> Gathered<Vec<pb::LogEntry>> {
        let calls = self.live().into_iter().map(|(id, address)| {
            let app = app.to_string();
            async move {
                let r = async {
                    let mut c = self.client(&address)?;
                    let read = async {
                        let mut stream = c
                            .logs(pb::LogsRequest {
                                app,
                                after_seq: 0,
                                follow: false,
                            })
                            .await
                            .map_err(|s| s.message().to_string())?
                            .into_inner();
                        let mut out = Vec::new();
                        while let Some(batch) = stream
                            .message()
                            .await
                            .map_err(|s| s.message().to_string())?
                        {
                            out.extend(batch.entries);
                        }
                        Ok::<_, String>(out)
                    };
                    tokio::time::timeout(NODE_TIMEOUT, read)
                        .await
                        .map_err(|_| format!("no answer in {NODE_TIMEOUT:?}"))?
                };
                (id, r.await)
            }
        });
        gather(futures::future::join_all(calls).await)
    }

    /// The log entries of `app` on the node at `address` after `after_seq`, followed while
    /// the stream stays open (the dashboard's live log).
    pub async fn follow_logs(
        &self,
        address: &str,
        app: &str,
        after_seq: u64,
    ) -> Result<tonic::Streaming<pb::LogsReply>, String> {
        let mut c = self.client(address)?;
        let opened = c.logs(pb::LogsRequest {
            app: app.to_string(),
            after_seq,
            follow: true,
        });
        answer(opened).await
    }

    /// Every live node's resource use and traffic counters, asking at most
    /// [`STATS_CONCURRENCY`] nodes at once.
    pub async fn stats(&self) -> Gathered<pb::NodeStatsReply> {
        use futures::StreamExt;
        let calls = self.live().into_iter().map(|(id, address)| async move {
            let r = async {
                let mut c = self.client(&address)?;
                answer(c.node_stats(pb::NodeStatsRequest {})).await
            }
            .await;
            (id, r)
        });
        let results = futures::stream::iter(calls)
            .buffer_unordered(STATS_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        gather(results)
    }

    /// Kills `pid` (untrappable) through its node.
    pub async fn kill(&self, pid: pb::Pid) -> Result<(), String> {
        let address = self
            .address_of(&pid.node)
            .ok_or_else(|| format!("node {} is not a live member", pid.node))?;
        let mut c = self.client(&address)?;
        answer(c.kill(pb::KillRequest { pid: Some(pid) })).await?;
        Ok(())
    }
}

/// A node's answer to `call` within [`NODE_TIMEOUT`], or why there is none.
async fn answer<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    tokio::time::timeout(NODE_TIMEOUT, call)
        .await
        .map_err(|_| format!("no answer in {NODE_TIMEOUT:?}"))?
        .map(tonic::Response::into_inner)
        .map_err(|s| s.message().to_string())
}

fn gather<T>(results: Vec<(String, Result<T, String>)>) -> Gathered<T> {
    let mut g = Gathered {
        answers: Vec::new(),
        missing: Vec::new(),
    };
    for (id, r) in results {
        match r {
            Ok(v) => g.answers.push((id, v)),
            Err(e) => g.missing.push((id, e)),
        }
    }
    g
}
