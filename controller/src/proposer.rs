//! Batches concurrent commands into one log entry each, so many writes share one fsync.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::{Error, Result};
use crate::trace::RaftWrite;
use crate::types::{now_ms, Command, MemberNode, Outcome, Raft, Request};

/// Most commands in one entry.
const MAX_BATCH: usize = 2048;
/// Entries proposed concurrently; more requests wait and join a later, larger batch.
const MAX_IN_FLIGHT: usize = 4;

struct Pending {
    cmd: Command,
    /// The outcome and the log index of the entry that applied the command.
    reply: oneshot::Sender<Result<(Outcome, u64)>>,
}

/// Submits commands to Raft, batching those that arrive together.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

/// Maps an openraft write error to ours (redirect when this member is not the leader).
pub fn write_error(e: RaftError<u64, ClientWriteError<u64, MemberNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader: f.leader_node.map(|n| n.api_addr),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Error::FailedPrecondition(c.to_string())
        }
        RaftError::Fatal(f) => Error::Unavailable(f.to_string()),
    }
}

impl Proposer {
    /// Starts the batching task for `raft`.
    pub fn spawn(raft: Raft) -> Self {
        let (tx, rx) = mpsc::channel(65_536);
        tokio::spawn(run(raft, rx));
        Proposer { tx }
    }

    /// Proposes one command and waits until it is applied; a refused command is an error.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome> {
        self.propose_indexed(cmd).await.map(|(outcome, _)| outcome)
    }

    /// [`Proposer::propose`], with the log index of the entry that applied the command (a
    /// node writing to the registry orders its own write against its watch stream by it).
    pub async fn propose_indexed(&self, cmd: Command) -> Result<(Outcome, u64)> {
        let write = RaftWrite::start(&cmd);
        let (reply, rx) = oneshot::channel();
        self.tx.send(Pending { cmd, reply }).await.map_err(|_| {
            Error::Unavailable("the controller is shutting down; retry on another member".into())
        })?;
        let outcome = received(rx.await);
        write.end(&outcome);
        outcome
    }
}

impl Proposer {
    /// Proposes several commands at once; they join the same batch when the writer is idle.
    pub async fn propose_many(&self, cmds: Vec<Command>) -> Vec<Result<Outcome>> {
        let mut waits = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let write = RaftWrite::start(&cmd);
            let (reply, rx) = oneshot::channel();
            if self.tx.send(Pending { cmd, reply }).await.is_err() {
                break;
            }
            waits.push((rx, write));
        }
        let mut out = Vec::with_capacity(waits.len());
        for (rx, write) in waits {
            let outcome = received(rx.await).map(|(o, _)| o);
            write.end(&outcome);
            out.push(outcome);
        }
        out
    }
}

/// What a proposer's caller makes of the batch task's answer: a refused command is an error.
fn received(
    answer: std::result::Result<Result<(Outcome, u64)>, oneshot::error::RecvError>,
) -> Result<(Outcome, u64)> {
    match answer {
        Ok(Ok((Outcome::Rejected(e), _))) => Err(e),
        Ok(r) => r,
        Err(_) => Err(Error::Unavailable(
            "the write was dropped while the controller shut down; retry".into(),
        )),
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Waiting for a slot first lets requests pile up into a bigger batch.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (cmds, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
            let n = cmds.len();
            match raft
                .client_write(Request {
                    now_ms: now_ms(),
                    cmds,
                })
                .await
            {
                Ok(resp) => {
                    let index = resp.log_id.index;
                    let mut outcomes = resp.data.outcomes.into_iter();
                    for reply in replies {
                        let o = outcomes.next().unwrap_or_else(|| {
                            Outcome::Rejected(Error::internal(format!(
                                "batch of {n} returned too few outcomes"
                            )))
                        });
                        let _ = reply.send(Ok((o, index)));
                    }
                }
                Err(e) => {
                    let e = write_error(e);
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}
