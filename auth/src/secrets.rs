//! The cluster secret and the node secret as both binaries take them: from a flag, a file or
//! the environment, a file winning over its flag.

use std::path::PathBuf;

/// `--secret`/`--secret-file` and `--node-secret`/`--node-secret-file`, shared by the
/// controller and node binaries (each sets its own help text and, for the controller, that
/// the cluster secret is required).
#[derive(clap::Args, Debug, Clone)]
pub struct SecretArgs {
    /// The cluster secret (prefer --secret-file: a command line is visible to every local
    /// user).
    #[arg(
        long,
        env = "REBEAM_SECRET",
        hide_env_values = true,
        conflicts_with = "secret_file"
    )]
    pub secret: Option<String>,
    /// File holding the cluster secret (surrounding whitespace is ignored).
    #[arg(long, env = "REBEAM_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// The node secret: good only for what nodes call. Prefer --node-secret-file.
    #[arg(
        long,
        env = "REBEAM_NODE_SECRET",
        hide_env_values = true,
        conflicts_with = "node_secret_file"
    )]
    pub node_secret: Option<String>,
    /// File holding the node secret (surrounding whitespace is ignored).
    #[arg(long, env = "REBEAM_NODE_SECRET_FILE")]
    pub node_secret_file: Option<PathBuf>,
}

/// The secrets [`SecretArgs`] gave, as given (an empty flag stays empty; each binary decides
/// what that means).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    /// The cluster secret.
    pub secret: Option<String>,
    /// The node secret.
    pub node_secret: Option<String>,
}

impl SecretArgs {
    /// Reads the secrets, each from its file when one is given (an unreadable or empty file
    /// is an error naming it), else from its flag or variable.
    pub fn read(&self) -> Result<Secrets, String> {
        let secret = match &self.secret_file {
            Some(path) => Some(crate::read_secret_file(path)?),
            None => self.secret.clone(),
        };
        let node_secret = match &self.node_secret_file {
            Some(path) => Some(crate::read_node_secret_file(path)?),
            None => self.node_secret.clone(),
        };
        Ok(Secrets {
            secret,
            node_secret,
        })
    }
}
