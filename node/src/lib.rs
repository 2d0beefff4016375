//! Re:BEAM worker node: an OTP-style actor runtime in Rust hosting Python actors.

pub mod runtime;
pub mod python;
