//! Input checks done before anything is proposed, so bad requests never reach the log.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::types::Pid;

/// Longest global name or group name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest node id, in bytes.
pub const MAX_NODE_ID_BYTES: usize = 128;
/// Most labels on one node.
pub const MAX_LABELS: usize = 64;
/// Most exits reported in one request.
pub const MAX_EXITS_PER_REPORT: usize = 10_000;
/// Longest error text (a Python traceback) kept from a node's report; the end, which names
/// the exception, is kept.
pub const MAX_REPORT_ERROR_BYTES: usize = 16 * 1024;
/// Most processes listed as having stayed on old code, per node report.
pub const MAX_STAYED_LISTED: usize = 32;
/// Longest error kept for one process that stayed on old code.
pub const MAX_STAYED_ERROR_BYTES: usize = 2048;

/// Checks a node id: 1..=128 chars of `[A-Za-z0-9._-]`.
pub fn node_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(
            "node id is empty; give the node a stable id such as `node-a`",
        ));
    }
    if id.len() > MAX_NODE_ID_BYTES {
        return Err(Error::invalid(format!(
            "node id is {} bytes; use at most {MAX_NODE_ID_BYTES}",
            id.len()
        )));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(Error::invalid(format!(
            "node id `{id}` may contain only letters, digits, `.`, `_` and `-`"
        )));
    }
    Ok(())
}

/// Checks a global name or group name: 1..=255 bytes, no control characters.
pub fn name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!(
            "{kind} is empty; pass a non-empty {kind}"
        )));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(format!(
            "{kind} is {} bytes; use at most {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{kind} contains control characters; remove them"
        )));
    }
    Ok(())
}

/// Checks a pid given by a client: present, with a valid node id and non-zero incarnation.
pub fn pid(pid: Option<Pid>) -> Result<Pid> {
    let pid = pid.ok_or_else(|| Error::invalid("pid is missing; pass the process's pid"))?;
    node_id(&pid.node)?;
    if pid.incarnation == 0 {
        return Err(Error::invalid(
            "pid incarnation is 0; use the incarnation the node got when it joined",
        ));
    }
    Ok(pid)
}

/// The last `max` bytes of `text` (at a character boundary), marked when something was cut:
/// a traceback's end names the exception, its start is the least useful part.
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[first {start} bytes cut]\n{}", &text[start..])
}

/// Checks that a required text field is present, naming it and what to pass.
pub fn required(field: &str, value: &str, hint: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(format!("{field} is empty; {hint}")));
    }
    Ok(())
}

/// Checks a peer-link address: non-empty `host:port`, at most 256 bytes.
pub fn address(addr: &str) -> Result<()> {
    if addr.is_empty() || addr.len() > 256 || !addr.contains(':') {
        return Err(Error::invalid(format!(
            "node address `{addr}` is not host:port; pass the address other nodes dial, e.g. 10.0.0.5:7200"
        )));
    }
    Ok(())
}

/// Checks node labels: at most 64, keys and values 1..=128 bytes without `=` in keys.
pub fn labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(format!(
            "{} labels given; use at most {MAX_LABELS}",
            labels.len()
        )));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > 128 || k.contains('=') || v.len() > 128 {
            return Err(Error::invalid(format!(
                "label `{k}={v}` is malformed; keys are 1..=128 bytes without `=`, values at most 128 bytes"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded() {
        assert!(name("name", "").is_err());
        assert!(name("name", &"x".repeat(256)).is_err());
        assert!(name("name", "a\nb").is_err());
        assert!(name("name", "lobby").is_ok());
    }

    #[test]
    fn tails_keep_the_end_at_a_char_boundary() {
        assert_eq!(tail("short", 10), "short");
        let t = tail("aébc", 3);
        assert!(t.ends_with("\nbc"), "{t}");
        assert!(t.starts_with("[first 3 bytes cut]"), "{t}");
    }

    #[test]
    fn node_ids_are_restricted() {
        assert!(node_id("node-a.1_x").is_ok());
        assert!(node_id("node a").is_err());
        assert!(node_id("").is_err());
    }
}
