//! Re:BEAM worker node: an OTP-style actor runtime in Rust hosting Python actors.

pub mod cluster;
pub mod dev;
pub mod guard;
pub mod observe;
pub mod python;
pub mod runtime;
pub mod shutdown;
