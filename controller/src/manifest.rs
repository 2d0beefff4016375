//! Parses and validates an app's `rebeam.toml` into an [`AppDraft`].

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::types::{AppDraft, ChildSpec, Placement, Restart};

/// Most top-level children in one app.
pub const MAX_CHILDREN: usize = 256;
/// Largest mailbox bound a manifest may give (2^48: past any real memory, so it only
/// catches typos and overflows).
pub const MAX_MAILBOX_BOUND: u64 = 1 << 48;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    app: RawApp,
    #[serde(default)]
    children: Vec<RawChild>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: String,
    version: String,
    #[serde(default = "default_max_restarts")]
    max_restarts: u32,
    #[serde(default = "default_max_seconds")]
    max_seconds: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChild {
    start: String,
    #[serde(default)]
    args: Vec<toml::Value>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    global: bool,
    #[serde(default = "default_restart")]
    restart: String,
    #[serde(default = "default_placement")]
    placement: String,
    /// Read by the nodes' supervisors: seconds, `brutal_kill` or `infinity`.
    #[serde(default)]
    shutdown: Option<toml::Value>,
    /// Read by the nodes: `module:attribute` of a user-defined registry in which `name` is
    /// the child's key (`rebeam.Via`).
    #[serde(default)]
    registry: Option<String>,
    /// Read by the nodes: most messages in the child's mailbox (0: unbounded).
    #[serde(default)]
    max_mailbox: Option<u64>,
    /// Read by the nodes: most bytes in the child's mailbox (0: unbounded).
    #[serde(default)]
    max_mailbox_bytes: Option<u64>,
}

fn default_max_restarts() -> u32 {
    3
}
fn default_max_seconds() -> u32 {
    5
}
fn default_restart() -> String {
    "permanent".into()
}
fn default_placement() -> String {
    "any".into()
}

/// Checks an app name: 1 to 64 ASCII letters, digits, `_` or `-`, starting with a letter or
/// digit. No dots: an app name becomes part of a module and a directory name on the nodes,
/// where `.` and `..` would escape or alias them.
pub fn app_name(s: &str) -> Result<()> {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || s.len() > 64
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        return Err(Error::invalid(format!(
            "rebeam.toml: app.name {s:?} is invalid; use 1 to 64 ASCII letters, digits, `_` or `-`, starting with a letter or digit"
        )));
    }
    Ok(())
}

/// Checks a version: 1 to 64 ASCII letters, digits, `.`, `_`, `-` or `+`, starting with a
/// letter or digit.
fn version(s: &str) -> Result<()> {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || s.len() > 64
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
    {
        return Err(Error::invalid(format!(
            "rebeam.toml: app.version {s:?} is invalid; use 1 to 64 ASCII letters, digits, `.`, `_`, `-` or `+`, starting with a letter or digit"
        )));
    }
    Ok(())
}

/// Checks a child name: 1 to 255 bytes of ASCII letters, digits, `.`, `_` or `-`, starting
/// with a letter or digit (so `.`, `..`, `-x` and names with spaces or NUL are refused).
pub fn child_name(s: &str) -> Result<()> {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || s.len() > 255
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(Error::invalid(format!(
            "rebeam.toml: child name {s:?} is invalid; use 1 to 255 ASCII letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        )));
    }
    Ok(())
}

/// A TOML error as a message naming the file, the line and the key written there.
fn toml_error(text: &str, e: &toml::de::Error) -> Error {
    let at = e.span().map(|span| {
        let start = span.start.min(text.len());
        let line_no = text[..start].matches('\n').count() + 1;
        let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
        let line: String = line.chars().take(80).collect();
        format!(" line {line_no} (`{line}`)")
    });
    Error::invalid(format!(
        "rebeam.toml{}: {}",
        at.unwrap_or_default(),
        e.message().trim_end()
    ))
}

/// Parses a placement string: `any`, `spread` or `label=value`.
pub fn placement(s: &str) -> Result<Placement> {
    match s {
        "any" => Ok(Placement::Any),
        "spread" => Ok(Placement::Spread),
        other => match other.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                Ok(Placement::Label(k.to_string(), v.to_string()))
            }
            _ => Err(Error::invalid(format!(
                "placement `{other}` is unknown; use \"any\", \"spread\" or \"label=value\""
            ))),
        },
    }
}

fn restart(s: &str) -> Result<Restart> {
    match s {
        "permanent" => Ok(Restart::Permanent),
        "transient" => Ok(Restart::Transient),
        "temporary" => Ok(Restart::Temporary),
        other => Err(Error::invalid(format!(
            "restart `{other}` is unknown; use \"permanent\", \"transient\" or \"temporary\""
        ))),
    }
}

/// Parses and validates a manifest.
pub fn parse(toml_text: &str) -> Result<AppDraft> {
    let raw: RawManifest = toml::from_str(toml_text).map_err(|e| toml_error(toml_text, &e))?;
    app_name(&raw.app.name)?;
    version(&raw.app.version)?;
    if raw.children.is_empty() {
        return Err(Error::invalid(
            "rebeam.toml: at least one [[children]] entry is required",
        ));
    }
    if raw.app.max_seconds == 0 || raw.app.max_seconds > 86_400 {
        return Err(Error::invalid("max_seconds must be between 1 and 86400"));
    }
    if raw.app.max_restarts > 10_000 {
        return Err(Error::invalid("max_restarts must be at most 10000"));
    }
    if raw.children.len() > MAX_CHILDREN {
        return Err(Error::invalid(format!(
            "the app has {} children; use at most {MAX_CHILDREN}",
            raw.children.len()
        )));
    }
    let mut ids = BTreeSet::new();
    let mut children = Vec::with_capacity(raw.children.len());
    for (i, c) in raw.children.into_iter().enumerate() {
        match c.start.split_once(':') {
            Some((m, a)) if !m.is_empty() && !a.is_empty() => {}
            _ => {
                return Err(Error::invalid(format!(
                    "child {i}: start `{}` is not `module:attribute`",
                    c.start
                )))
            }
        }
        if c.global && c.name.is_empty() {
            return Err(Error::invalid(format!(
                "child {i}: global = true needs a name"
            )));
        }
        if !c.name.is_empty() {
            child_name(&c.name)?;
        }
        if let Some(registry) = &c.registry {
            if !matches!(registry.split_once(':'), Some((m, a)) if !m.is_empty() && !a.is_empty() && !a.contains(':'))
            {
                return Err(Error::invalid(format!(
                    "rebeam.toml: children[{i}].registry `{registry}` is not `module:attribute`"
                )));
            }
            if c.name.is_empty() || c.global {
                return Err(Error::invalid(format!(
                    "rebeam.toml: children[{i}].registry needs a name (its key) and no global = true"
                )));
            }
        }
        match &c.shutdown {
            None => {}
            Some(toml::Value::Integer(n)) if *n >= 0 => {}
            Some(toml::Value::Float(f)) if f.is_finite() && *f >= 0.0 => {}
            Some(toml::Value::String(s)) if s == "brutal_kill" || s == "infinity" => {}
            Some(other) => {
                return Err(Error::invalid(format!(
                    "rebeam.toml: children[{i}].shutdown is {other}; use seconds, \"brutal_kill\" or \"infinity\""
                )))
            }
        }
        for (key, value) in [
            ("max_mailbox", c.max_mailbox),
            ("max_mailbox_bytes", c.max_mailbox_bytes),
        ] {
            if value.is_some_and(|v| v > MAX_MAILBOX_BOUND) {
                return Err(Error::invalid(format!(
                    "rebeam.toml: children[{i}].{key} is over {MAX_MAILBOX_BOUND}; use a smaller bound, or 0 for none"
                )));
            }
        }
        let id = if c.name.is_empty() {
            format!("child-{i}")
        } else {
            c.name.clone()
        };
        if !ids.insert(id.clone()) {
            return Err(Error::invalid(format!(
                "child name `{id}` is used twice; names must be unique within the app"
            )));
        }
        let args_json = serde_json::to_string(&c.args)
            .map_err(|e| Error::invalid(format!("child {i}: args: {e}")))?;
        children.push(ChildSpec {
            id,
            start: c.start,
            args_json,
            name: c.name,
            global: c.global,
            restart: restart(&c.restart)?,
            placement: placement(&c.placement)?,
        });
    }
    Ok(AppDraft {
        name: raw.app.name,
        version: raw.app.version,
        max_restarts: raw.app.max_restarts,
        max_seconds: raw.app.max_seconds,
        children,
        manifest_toml: toml_text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_design_example() {
        let m = r#"
[app]
name = "chat"
version = "1.0.0"
max_restarts = 3
max_seconds = 5

[[children]]
start = "chat.lobby:Lobby"
args = [1, "x"]
name = "lobby"
global = true
restart = "permanent"
placement = "zone=eu"
"#;
        let d = parse(m).expect("parses");
        assert_eq!(
            d.children[0].placement,
            Placement::Label("zone".into(), "eu".into())
        );
        assert_eq!(d.children[0].args_json, r#"[1,"x"]"#);
    }

    #[test]
    fn rejects_unknown_keys_wrong_types_and_bad_names_naming_the_key() {
        let cases = [
            (
                "[app]\nname='a'\nversion='1'\nmax_restart=1\n[[children]]\nstart='m:f'\n",
                "max_restart",
            ),
            (
                "[app]\nname='a'\nversion='1'\n[[children]]\nstart='m:f'\nrestat='temporary'\n",
                "restat",
            ),
            ("[app]\nname='a'\nversion='1'\nchildren='m:f'\n", "children"),
            (
                "[app]\nname='a'\nversion='1'\n",
                "at least one [[children]]",
            ),
            (
                "[app]\nname='..'\nversion='1'\n[[children]]\nstart='m:f'\n",
                "app.name",
            ),
            (
                "[app]\nname='.'\nversion='1'\n[[children]]\nstart='m:f'\n",
                "app.name",
            ),
            (
                "[app]\nname='-x'\nversion='1'\n[[children]]\nstart='m:f'\n",
                "app.name",
            ),
            (
                "[app]\nname='+'\nversion='1'\n[[children]]\nstart='m:f'\n",
                "app.name",
            ),
            (
                "[app]\nname='a\\u0000'\nversion='1'\n[[children]]\nstart='m:f'\n",
                "app.name",
            ),
            (
                "[app]\nname='a.b'\nversion='1'\n[[children]]\nstart='m:f'\n",
                "app.name",
            ),
            (
                "[app]\nname='a'\nversion='..'\n[[children]]\nstart='m:f'\n",
                "app.version",
            ),
            (
                "[app]\nname='a'\nversion='1'\n[[children]]\nstart='m:f'\nname='..'\n",
                "child name",
            ),
            (
                "[app]\nname='a'\nversion='1'\n[[children]]\nstart='m:f'\nname='-x'\n",
                "child name",
            ),
            (
                "[app]\nname='a'\nversion='1'\n[[children]]\nstart='m:f'\nshutdown=[1]\n",
                "shutdown",
            ),
            (
                "[app]\nname='a'\nversion='1'\n[[children]]\nstart='m:f'\nmax_mailbox=-1\n",
                "max_mailbox",
            ),
            (
                "[app]\nname='a'\nversion='1'\n[[children]]\nstart='m:f'\nmax_mailbox_bytes='1M'\n",
                "max_mailbox_bytes",
            ),
            (
                "[app]\nname='a'\nversion='1'\n[[children]]\nstart='m:f'\nmax_mailbox_bytes=9999999999999999\n",
                "max_mailbox_bytes",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).expect_err(text).to_string();
            assert!(
                e.contains(key) && e.contains("rebeam.toml"),
                "{text:?}: {e}"
            );
        }
        let ok = "[app]\nname='a-1'\nversion='1.0+b'\n[[children]]\nstart='m:f'\nname='x.y'\nshutdown='brutal_kill'\nmax_mailbox=1000\nmax_mailbox_bytes=0\n";
        assert!(parse(ok).is_ok());
    }

    #[test]
    fn rejects_bad_placement_and_duplicates() {
        let bad = "[app]\nname='a'\nversion='1'\n[[children]]\nstart='m:f'\nplacement='nowhere'\n";
        assert!(parse(bad).is_err());
        let dup = "[app]\nname='a'\nversion='1'\n[[children]]\nstart='m:f'\nname='x'\n[[children]]\nstart='m:g'\nname='x'\n";
        assert!(parse(dup).is_err());
    }
}
