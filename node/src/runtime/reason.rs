//! Exit reasons, as in OTP: `normal`, `shutdown`, `killed`, `noproc`, crashes and terms.

use std::fmt;
use std::sync::Arc;

/// An opaque serialized term (a pickle, for Python): the core never looks inside.
pub type Term = Arc<[u8]>;

/// Why a process exited, or the reason carried by an exit signal.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// Ordinary end: linked processes are not affected.
    Normal,
    /// Orderly shutdown, usually by a supervisor.
    Shutdown,
    /// `("shutdown", term)`: orderly shutdown with extra information.
    ShutdownWith(Term),
    /// The untrappable kill signal; the victim exits with `Killed`.
    Kill,
    /// Exit reason of a killed process (trappable when it reaches links).
    Killed,
    /// The target process did not exist.
    Noproc,
    /// The target's node was lost.
    Noconnection,
    /// The process was killed because a delivery would have passed its mailbox limit.
    MailboxLimit,
    /// The node's memory guard ended the process: its app held the most queued messages
    /// when the node ran short of memory.
    MemoryGuard,
    /// An uncaught exception in the process's code.
    Crash(Arc<Crash>),
    /// Any other term.
    Other(Term),
}

/// The description of an uncaught exception.
#[derive(Clone, Debug, PartialEq)]
pub struct Crash {
    /// The exception's type name, e.g. `ValueError`.
    pub kind: String,
    /// `str()` of the exception.
    pub message: String,
    /// The formatted traceback.
    pub traceback: String,
}

impl Reason {
    /// True for `normal`, the one reason that does not propagate along links.
    pub fn is_normal(&self) -> bool {
        matches!(self, Reason::Normal)
    }

    /// The atom naming a reason that carries no data (`normal`, `killed`, ...).
    pub fn atom(&self) -> Option<&'static str> {
        Some(match self {
            Reason::Normal => "normal",
            Reason::Shutdown => "shutdown",
            Reason::Kill => "kill",
            Reason::Killed => "killed",
            Reason::Noproc => "noproc",
            Reason::Noconnection => "noconnection",
            Reason::MailboxLimit => "mailbox_limit",
            Reason::MemoryGuard => "memory_guard",
            _ => return None,
        })
    }

    /// The reason an atom names, if it names one.
    pub fn from_atom(atom: &str) -> Option<Reason> {
        Some(match atom {
            "normal" => Reason::Normal,
            "shutdown" => Reason::Shutdown,
            "kill" => Reason::Kill,
            "killed" => Reason::Killed,
            "noproc" => Reason::Noproc,
            "noconnection" => Reason::Noconnection,
            "mailbox_limit" => Reason::MailboxLimit,
            "memory_guard" => Reason::MemoryGuard,
            _ => return None,
        })
    }

    /// The bytes a reason carries beyond its fixed size (terms, crash texts).
    pub fn bytes(&self) -> usize {
        match self {
            Reason::ShutdownWith(t) | Reason::Other(t) => t.len(),
            Reason::Crash(c) => c.kind.len() + c.message.len() + c.traceback.len(),
            _ => 0,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Normal => f.write_str("normal"),
            Reason::Shutdown => f.write_str("shutdown"),
            Reason::ShutdownWith(_) => f.write_str("(shutdown, ...)"),
            Reason::Kill => f.write_str("kill"),
            Reason::Killed => f.write_str("killed"),
            Reason::Noproc => f.write_str("noproc"),
            Reason::Noconnection => f.write_str("noconnection"),
            Reason::MailboxLimit => f.write_str("mailbox_limit"),
            Reason::MemoryGuard => f.write_str("memory_guard"),
            Reason::Crash(c) => write!(f, "{}: {}", c.kind, c.message),
            Reason::Other(_) => f.write_str("<term>"),
        }
    }
}
