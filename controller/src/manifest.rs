//! Parses and validates an app's `rebeam.toml` into an [`AppDraft`].

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::types::{AppDraft, ChildSpec, Placement, Restart};

/// Most top-level children in one app.
pub const MAX_CHILDREN: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    app: RawApp,
    #[serde(default)]
    children: Vec<RawChild>,
}

#[derive(Deserialize)]
struct RawApp {
    name: String,
    version: String,
    #[serde(default = "default_max_restarts")]
    max_restarts: u32,
    #[serde(default = "default_max_seconds")]
    max_seconds: u32,
}

#[derive(Deserialize)]
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

fn ident(kind: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
    {
        return Err(Error::invalid(format!(
            "manifest {kind} `{s}` is invalid; use 1..=64 letters, digits, `.`, `_`, `-` or `+`"
        )));
    }
    Ok(())
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
    let raw: RawManifest = toml::from_str(toml_text)
        .map_err(|e| Error::invalid(format!("rebeam.toml does not parse: {}", e.message())))?;
    ident("app name", &raw.app.name)?;
    ident("version", &raw.app.version)?;
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
            crate::validate::name("child name", &c.name)?;
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
    fn rejects_bad_placement_and_duplicates() {
        let bad = "[app]\nname='a'\nversion='1'\n[[children]]\nstart='m:f'\nplacement='nowhere'\n";
        assert!(parse(bad).is_err());
        let dup = "[app]\nname='a'\nversion='1'\n[[children]]\nstart='m:f'\nname='x'\n[[children]]\nstart='m:g'\nname='x'\n";
        assert!(parse(dup).is_err());
    }
}
