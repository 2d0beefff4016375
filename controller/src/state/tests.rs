//! Unit tests of the state machine's rules, without Raft.

use super::*;
use crate::error::Error;
use crate::types::{AppDraft, AppStatus, ChildSpec, Placement, Restart};

fn apply(s: &mut State, index: u64, now_ms: u64, cmd: Command) -> Outcome {
    let mut events = Vec::new();
    let mut r = s.apply(
        Request {
            now_ms,
            cmds: vec![cmd],
        },
        index,
        &mut events,
    );
    r.outcomes.remove(0)
}

fn join(s: &mut State, index: u64, node: &str, labels: &[(&str, &str)]) -> u64 {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match apply(
        s,
        index,
        0,
        Command::Join {
            node: node.into(),
            address: "h:1".into(),
            labels,
            capacity: 0,
        },
    ) {
        Outcome::Joined { incarnation } => incarnation,
        o => panic!("{o:?}"),
    }
}

fn pid(node: &str, incarnation: u64, serial: u64) -> Pid {
    Pid {
        node: node.into(),
        incarnation,
        serial,
    }
}

fn draft(children: Vec<(&str, Placement)>, max_restarts: u32) -> AppDraft {
    AppDraft {
        name: "app".into(),
        version: "1".into(),
        max_restarts,
        max_seconds: 5,
        children: children
            .into_iter()
            .map(|(id, placement)| ChildSpec {
                id: id.into(),
                start: "m:f".into(),
                args_json: "[]".into(),
                name: id.into(),
                global: false,
                restart: Restart::Permanent,
                placement,
            })
            .collect(),
        manifest_toml: String::new(),
    }
}

#[test]
fn one_registration_wins_and_the_loser_learns_the_holder() {
    let mut s = State::default();
    let inc = join(&mut s, 1, "a", &[]);
    let r1 = apply(
        &mut s,
        2,
        0,
        Command::Register {
            name: "x".into(),
            pid: pid("a", inc, 1),
        },
    );
    let r2 = apply(
        &mut s,
        3,
        0,
        Command::Register {
            name: "x".into(),
            pid: pid("a", inc, 2),
        },
    );
    assert_eq!(
        r1,
        Outcome::Registered {
            registered: true,
            holder: pid("a", inc, 1)
        }
    );
    assert_eq!(
        r2,
        Outcome::Registered {
            registered: false,
            holder: pid("a", inc, 1)
        }
    );
}

#[test]
fn stale_incarnations_are_refused_and_death_releases_names() {
    let mut s = State::default();
    let old = join(&mut s, 1, "a", &[]);
    apply(
        &mut s,
        2,
        0,
        Command::Register {
            name: "x".into(),
            pid: pid("a", old, 1),
        },
    );
    apply(
        &mut s,
        3,
        0,
        Command::PgJoin {
            group: "g".into(),
            pid: pid("a", old, 1),
        },
    );
    apply(
        &mut s,
        4,
        0,
        Command::DeclareDead {
            node: "a".into(),
            incarnation: old,
            reason: "lease".into(),
        },
    );
    assert!(s.names.is_empty());
    assert!(s.groups.is_empty());
    let r = apply(
        &mut s,
        5,
        0,
        Command::Register {
            name: "y".into(),
            pid: pid("a", old, 2),
        },
    );
    assert!(
        matches!(r, Outcome::Rejected(Error::FailedPrecondition(_))),
        "{r:?}"
    );
    let new = join(&mut s, 6, "a", &[]);
    assert_ne!(new, old);
    let r = apply(
        &mut s,
        7,
        0,
        Command::ReportExits {
            node: "a".into(),
            incarnation: old,
            exits: vec![],
        },
    );
    assert!(matches!(r, Outcome::Rejected(Error::FailedPrecondition(_))));
}

#[test]
fn children_move_off_a_dead_node_and_wait_without_eligible_nodes() {
    let mut s = State::default();
    let a = join(&mut s, 1, "a", &[("zone", "x")]);
    let r = apply(
        &mut s,
        2,
        0,
        Command::SubmitApp {
            draft: draft(
                vec![
                    ("c1", Placement::Label("zone".into(), "x".into())),
                    ("c2", Placement::Any),
                ],
                3,
            ),
            code: Blob(vec![1]),
            code_hash: "h".into(),
            upgrade: false,
        },
    );
    assert!(matches!(r, Outcome::App(_)));
    let b = join(&mut s, 3, "b", &[]);
    apply(
        &mut s,
        4,
        1000,
        Command::DeclareDead {
            node: "a".into(),
            incarnation: a,
            reason: "lease".into(),
        },
    );
    let c1 = &s.assignments["app"]["c1"];
    let c2 = &s.assignments["app"]["c2"];
    assert_eq!(c1.node, None, "no node with zone=x: waits");
    assert_eq!(c2.node, Some(("b".into(), b)));
    assert_eq!(c2.generation, 2);
    assert_eq!(c2.history.len(), 1);
    let a2 = join(&mut s, 5, "a", &[("zone", "x")]);
    assert_eq!(s.assignments["app"]["c1"].node, Some(("a".into(), a2)));
}

#[test]
fn intensity_beyond_the_limit_fails_the_app() {
    let mut s = State::default();
    let mut inc = join(&mut s, 1, "a", &[]);
    apply(
        &mut s,
        2,
        0,
        Command::SubmitApp {
            draft: draft(vec![("c", Placement::Any)], 1),
            code: Blob(vec![]),
            code_hash: "h".into(),
            upgrade: false,
        },
    );
    for (i, idx) in [10u64, 20].iter().enumerate() {
        apply(
            &mut s,
            *idx,
            100 * i as u64,
            Command::DeclareDead {
                node: "a".into(),
                incarnation: inc,
                reason: "x".into(),
            },
        );
        inc = join(&mut s, idx + 1, "a", &[]);
    }
    assert_eq!(s.apps["app"].status, AppStatus::Failed);
    assert!(!s.assignments.contains_key("app"));
}

#[test]
fn refused_upgrade_changes_nothing() {
    let mut s = State::default();
    join(&mut s, 1, "a", &[]);
    let d = draft(vec![("c", Placement::Any)], 3);
    apply(
        &mut s,
        2,
        0,
        Command::SubmitApp {
            draft: d.clone(),
            code: Blob(vec![1]),
            code_hash: "h1".into(),
            upgrade: false,
        },
    );
    let before = serde_json::to_string(&s).expect("ser");
    let r = apply(
        &mut s,
        3,
        0,
        Command::SubmitApp {
            draft: d,
            code: Blob(vec![2]),
            code_hash: "h2".into(),
            upgrade: true,
        },
    );
    assert!(matches!(r, Outcome::Rejected(Error::AlreadyExists(_))));
    assert_eq!(before, serde_json::to_string(&s).expect("ser"));
}
