//! Peers on the same host: a node whose peer port is on a loopback address also accepts peer
//! connections on a Unix socket named for that port, and a node dialling a loopback address
//! tries that socket first (falling back to TCP). Only without TLS: with TLS configured the
//! data plane stays on TLS over TCP, with its certificate checks. The handshake is the same
//! on both, so a process that can reach the socket still needs the cluster secret.

use super::handshake::Proof;
use crate::cluster::Cluster;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The Unix socket of the node whose peer address is `address`, when that is a loopback
/// address (only one process on a host can hold a loopback port, so the name is its own).
pub fn socket_path(address: &str) -> Option<PathBuf> {
    let addr: SocketAddr = address.parse().ok()?;
    addr.ip()
        .is_loopback()
        .then(|| std::env::temp_dir().join(format!("rebeam-peer-{}.sock", addr.port())))
}

/// Accepts peer connections on the Unix socket of `bound` (the node's peer port) when it is
/// a loopback address and TLS is off; false when not (or when the socket cannot be made:
/// peers then use TCP). The file stays after the node exits, as after a crash; the next node
/// on that port replaces it, and a dialler finding nobody behind it uses TCP.
pub fn listen(cluster: &Arc<Cluster>, bound: SocketAddr) -> bool {
    if cluster.dialer.is_tls() {
        return false;
    }
    let Some(path) = socket_path(&bound.to_string()) else {
        return false;
    };
    // This process holds the TCP port, so a file of that name is left from a node that
    // held the port before and died: it is ours to replace.
    let _ = std::fs::remove_file(&path);
    let listener = {
        let _guard = cluster.peer_io.enter();
        match tokio::net::UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                tracing::info!(path = %path.display(), error = %e, "no Unix socket for local peers");
                return false;
            }
        }
    };
    let cluster = cluster.clone();
    let proof = Proof::secret(&cluster.config.secret);
    let peer_io = cluster.peer_io.clone();
    peer_io.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let (cluster, proof) = (cluster.clone(), proof.clone());
                    tokio::spawn(super::accept::serve(cluster, stream, proof));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the local peer socket failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::socket_path;

    #[test]
    fn only_loopback_peers_have_a_local_socket() {
        assert!(socket_path("127.0.0.1:7201").is_some_and(|p| p.ends_with("rebeam-peer-7201.sock")));
        assert!(socket_path("[::1]:7201").is_some());
        assert!(socket_path("10.0.0.5:7201").is_none());
        assert!(socket_path("node-a:7201").is_none());
    }
}
