//! Local unique names.

use super::host::Host;
use super::pid::Pid;
use super::process::{Process, Status};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use thiserror::Error;

/// Why a name could not be registered.
#[derive(Debug, Error, PartialEq)]
pub enum RegistryError {
    /// The name is held by another process.
    #[error("name is already registered to {0}")]
    Taken(Pid),
    /// The process already has a name.
    #[error("process already has the name {0:?}")]
    AlreadyNamed(String),
    /// The process is not alive.
    #[error("no such process")]
    Noproc,
}

/// Name → pid for this node.
#[derive(Default)]
pub struct Registry {
    names: Mutex<HashMap<Arc<str>, Pid>>,
}

impl Registry {
    /// Registers `name` for a live process.
    pub fn register<H: Host>(
        &self,
        name: &str,
        process: &Arc<Process<H>>,
    ) -> Result<(), RegistryError> {
        let mut names = self.names.lock();
        if let Some(holder) = names.get(name) {
            return Err(RegistryError::Taken(*holder));
        }
        let name: Arc<str> = Arc::from(name);
        {
            let mut st = process.lock();
            if st.status == Status::Exited {
                return Err(RegistryError::Noproc);
            }
            if let Some(existing) = &st.name {
                return Err(RegistryError::AlreadyNamed(existing.to_string()));
            }
            st.name = Some(name.clone());
        }
        names.insert(name, process.pid);
        Ok(())
    }

    /// Releases `name` if `pid` still holds it.
    pub fn release(&self, name: &str, pid: Pid) {
        let mut names = self.names.lock();
        if names.get(name) == Some(&pid) {
            names.remove(name);
        }
    }

    /// Removes `name`, returning its holder.
    pub fn unregister(&self, name: &str) -> Option<Pid> {
        self.names.lock().remove(name)
    }

    /// The holder of `name`.
    pub fn whereis(&self, name: &str) -> Option<Pid> {
        self.names.lock().get(name).copied()
    }

    /// Every name and its holder, sorted by name.
    pub fn all(&self) -> Vec<(String, Pid)> {
        let mut out: Vec<_> = self
            .names
            .lock()
            .iter()
            .map(|(n, p)| (n.to_string(), *p))
            .collect();
        out.sort();
        out
    }
}
