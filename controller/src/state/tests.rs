//! Unit tests of the state machine's rules, without Raft.

use super::*;
use crate::error::Error;
use crate::types::{
    AppDraft, AppStatus, ChildSpec, NodeUpgrade, Placement, Restart, UpgradeStatus,
};

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

fn submit(s: &mut State, index: u64, d: AppDraft, hash: &str, upgrade: bool) -> Outcome {
    apply(
        s,
        index,
        index * 10,
        Command::SubmitApp {
            draft: d,
            code: Blob(hash.as_bytes().to_vec()),
            code_hash: hash.into(),
            upgrade,
        },
    )
}

fn version(mut d: AppDraft, v: &str) -> AppDraft {
    d.version = v.into();
    d.manifest_toml = format!("version {v}");
    d
}

fn started(s: &mut State, index: u64, node: &str, inc: u64, child: &str, serial: u64) {
    started_in(s, index, "app", node, inc, child, serial);
}

/// The controller's verdict that node `node`'s incarnation `inc` died (its stream closed).
fn declare_dead(s: &mut State, index: u64, now_ms: u64, node: &str, inc: u64) {
    apply(
        s,
        index,
        now_ms,
        Command::DeclareDead {
            node: node.into(),
            incarnation: inc,
            reason: "stream closed".into(),
        },
    );
}

/// A node's report that it started a child of `app` at its current generation.
fn started_in(
    s: &mut State,
    index: u64,
    app: &str,
    node: &str,
    inc: u64,
    child: &str,
    serial: u64,
) {
    let generation = s.assignments[app][child].generation;
    let r = apply(
        s,
        index,
        0,
        Command::ChildStarted {
            node: node.into(),
            incarnation: inc,
            app: app.into(),
            child: child.into(),
            generation,
            pid: pid(node, inc, serial),
        },
    );
    assert_eq!(r, Outcome::Done);
}

fn report(node: &str, hash: &str, status: UpgradeStatus, error: &str) -> NodeUpgrade {
    NodeUpgrade {
        node: node.into(),
        code_hash: hash.into(),
        version: String::new(),
        status,
        error: error.into(),
        upgraded: 1,
        stayed: Vec::new(),
    }
}

fn upgrade_report(s: &mut State, index: u64, node: &str, inc: u64, r: NodeUpgrade) -> Outcome {
    apply(
        s,
        index,
        0,
        Command::UpgradeReport {
            node: node.into(),
            incarnation: inc,
            app: "app".into(),
            result: r,
        },
    )
}

fn apply_events(s: &mut State, index: u64, cmd: Command) -> (Outcome, Vec<Event>) {
    let mut events = Vec::new();
    let mut r = s.apply(
        Request {
            now_ms: index * 10,
            cmds: vec![cmd],
        },
        index,
        &mut events,
    );
    (r.outcomes.remove(0), events)
}

#[test]
fn rollback_swaps_versions_and_moves_children_like_an_upgrade() {
    let mut s = State::default();
    let a = join(&mut s, 1, "a", &[]);
    let v1 = version(
        draft(vec![("c1", Placement::Any), ("c2", Placement::Any)], 3),
        "1",
    );
    let v2 = version(
        draft(vec![("c1", Placement::Any), ("c3", Placement::Any)], 3),
        "2",
    );
    submit(&mut s, 2, v1.clone(), "h1", false);
    started(&mut s, 3, "a", a, "c1", 1);
    submit(&mut s, 4, v2.clone(), "h2", true);
    upgrade_report(
        &mut s,
        5,
        "a",
        a,
        report("a", "h2", UpgradeStatus::Done, ""),
    );
    assert_eq!(s.apps["app"].upgrades.len(), 1);

    let (r, events) = apply_events(&mut s, 6, Command::RollbackApp { name: "app".into() });
    let Outcome::App(app) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        app.draft, v1,
        "the whole previous version is current, manifest included"
    );
    assert_eq!(app.code_hash, "h1");
    let prev = app.previous.as_ref().expect("the newer version is kept");
    assert_eq!(
        (prev.draft.version.as_str(), prev.code_hash.as_str()),
        ("2", "h2")
    );
    assert!(
        app.upgrades.is_empty(),
        "results of the old code are dropped"
    );
    assert!(s.code.contains_key("h1") && s.code.contains_key("h2"));
    let m = &s.assignments["app"];
    assert_eq!(m["c1"].generation, 1, "a kept child moves in place");
    assert_eq!(m["c1"].pid, Some(pid("a", a, 1)));
    assert!(m.contains_key("c2") && !m.contains_key("c3"));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::AppChanged(x) if x.code_hash == "h1")));
    assert!(events.iter().any(|e| matches!(e,
        Event::AssignmentSet(v) if v.assignment.child == "c1" && v.code_hash == "h1" && v.app_version == "1")));
    assert!(events.iter().any(|e| matches!(e,
        Event::AssignmentRemoved { child, .. } if child == "c3")));

    // Rolling back again re-applies the newer version.
    let Outcome::App(app) = apply(&mut s, 7, 70, Command::RollbackApp { name: "app".into() })
    else {
        panic!("second rollback refused")
    };
    assert_eq!(
        (app.draft.version.as_str(), app.code_hash.as_str()),
        ("2", "h2")
    );
    assert_eq!(app.previous.map(|p| p.code_hash), Some("h1".into()));
}

#[test]
fn rollback_is_refused_without_a_previous_running_version() {
    let mut s = State::default();
    join(&mut s, 1, "a", &[]);
    let r = apply(&mut s, 2, 0, Command::RollbackApp { name: "app".into() });
    assert!(matches!(r, Outcome::Rejected(Error::NotFound(_))), "{r:?}");
    submit(
        &mut s,
        3,
        draft(vec![("c", Placement::Any)], 3),
        "h1",
        false,
    );
    let before = serde_json::to_string(&s).expect("ser");
    let r = apply(&mut s, 4, 0, Command::RollbackApp { name: "app".into() });
    assert!(
        matches!(&r, Outcome::Rejected(Error::FailedPrecondition(m)) if m.contains("no previous version")),
        "{r:?}"
    );
    assert_eq!(before, serde_json::to_string(&s).expect("ser"));
    submit(
        &mut s,
        5,
        version(draft(vec![("c", Placement::Any)], 3), "2"),
        "h2",
        true,
    );
    apply(&mut s, 6, 0, Command::StopApp { name: "app".into() });
    let r = apply(&mut s, 7, 0, Command::RollbackApp { name: "app".into() });
    assert!(
        matches!(&r, Outcome::Rejected(Error::FailedPrecondition(m)) if m.contains("not running (stopped)")),
        "{r:?}"
    );
}

#[test]
fn failed_starts_count_toward_intensity_and_the_traceback_reaches_the_user() {
    let mut s = State::default();
    let a = join(&mut s, 1, "a", &[]);
    submit(&mut s, 2, draft(vec![("c", Placement::Any)], 2), "h", false);
    let traceback = "Traceback (most recent call last):\n  File \"m.py\", line 1\nImportError: no module named nope";
    let failed = |generation: u64| Command::ChildFailed {
        node: "a".into(),
        incarnation: a,
        app: "app".into(),
        child: "c".into(),
        generation,
        error: traceback.into(),
    };
    assert_eq!(apply(&mut s, 3, 100, failed(1)), Outcome::Changed(true));
    let c = &s.assignments["app"]["c"];
    assert_eq!(c.generation, 2, "restarted");
    assert_eq!(c.node, Some(("a".into(), a)));
    assert!(c.history[0]
        .reason
        .contains("ImportError: no module named nope"));
    let app = &s.apps["app"];
    assert_eq!(app.status, AppStatus::Running);
    assert!(
        app.last_error.contains("child c failed to start on a"),
        "{}",
        app.last_error
    );
    assert!(app.last_error.contains(traceback));

    // A report for the old generation is stale: nothing happens, nothing is counted.
    assert_eq!(apply(&mut s, 4, 200, failed(1)), Outcome::Changed(false));
    assert_eq!(s.assignments["app"]["c"].generation, 2);

    // The child starts after all: the error is cleared.
    started(&mut s, 5, "a", a, "c", 7);
    assert_eq!(s.apps["app"].last_error, "");

    // A crash and another failed start: three restarts in the window exceed max_restarts = 2.
    let generation = s.assignments["app"]["c"].generation;
    apply(
        &mut s,
        6,
        300,
        Command::ReportExits {
            node: "a".into(),
            incarnation: a,
            exits: vec![(pid("a", a, 7), "crash".into())],
        },
    );
    assert_eq!(s.assignments["app"]["c"].generation, generation + 1);
    apply(&mut s, 7, 400, failed(generation + 1));
    let app = &s.apps["app"];
    assert_eq!(app.status, AppStatus::Failed);
    assert!(
        app.failure_reason.contains(traceback),
        "{}",
        app.failure_reason
    );
    assert!(app.last_error.contains(traceback));
    assert!(!s.assignments.contains_key("app"));

    // A new submit starts clean.
    let Outcome::App(app) = submit(&mut s, 8, draft(vec![("c", Placement::Any)], 1), "h", false)
    else {
        panic!("resubmit refused")
    };
    assert_eq!(app.last_error, "");
}

#[test]
fn temporary_children_that_fail_to_start_are_not_restarted() {
    let mut s = State::default();
    let a = join(&mut s, 1, "a", &[]);
    let mut d = draft(vec![("c", Placement::Any)], 0);
    d.children[0].restart = Restart::Temporary;
    submit(&mut s, 2, d, "h", false);
    let r = apply(
        &mut s,
        3,
        0,
        Command::ChildFailed {
            node: "a".into(),
            incarnation: a,
            app: "app".into(),
            child: "c".into(),
            generation: 1,
            error: "boom".into(),
        },
    );
    assert_eq!(r, Outcome::Changed(true));
    assert!(s.assignments["app"].is_empty());
    let app = &s.apps["app"];
    assert_eq!(
        app.status,
        AppStatus::Running,
        "no restart, so nothing counted"
    );
    assert!(app.last_error.ends_with("boom"));
}

#[test]
fn a_failed_upgrade_report_rolls_back_and_forgets_the_broken_version() {
    let mut s = State::default();
    let a = join(&mut s, 1, "a", &[]);
    let b = join(&mut s, 2, "b", &[]);
    let d = draft(vec![("c1", Placement::Any), ("c2", Placement::Any)], 3);
    submit(&mut s, 3, version(d.clone(), "1.0.0"), "h1", false);
    submit(&mut s, 4, version(d, "2.0.0"), "h2", true);
    let done = upgrade_report(
        &mut s,
        5,
        "a",
        a,
        report("a", "h2", UpgradeStatus::Partial, ""),
    );
    assert_eq!(done, Outcome::Changed(true));
    assert_eq!(
        s.apps["app"].code_hash, "h2",
        "partial results are only recorded"
    );
    assert_eq!(s.apps["app"].upgrades["a"].status, UpgradeStatus::Partial);

    let (r, events) = apply_events(
        &mut s,
        6,
        Command::UpgradeReport {
            node: "b".into(),
            incarnation: b,
            app: "app".into(),
            result: report("b", "h2", UpgradeStatus::Failed, "ImportError: bad"),
        },
    );
    assert_eq!(r, Outcome::Changed(true));
    let app = &s.apps["app"];
    assert_eq!(
        (app.draft.version.as_str(), app.code_hash.as_str()),
        ("1.0.0", "h1")
    );
    assert_eq!(app.previous, None, "the broken version is not kept");
    assert_eq!(
        app.upgrade_error,
        "upgrade to 2.0.0 failed on b: ImportError: bad; rolled back to 1.0.0"
    );
    assert!(app.upgrades.is_empty());
    assert!(
        !s.code.contains_key("h2"),
        "nothing refers to the broken code"
    );
    assert!(events.iter().any(|e| matches!(e,
        Event::AssignmentSet(v) if v.code_hash == "h1")));
    let r = apply(&mut s, 7, 0, Command::RollbackApp { name: "app".into() });
    assert!(
        matches!(r, Outcome::Rejected(Error::FailedPrecondition(_))),
        "{r:?}"
    );

    // Reports about the code that is gone are stale.
    let before = serde_json::to_string(&s).expect("ser");
    let r = upgrade_report(
        &mut s,
        8,
        "a",
        a,
        report("a", "h2", UpgradeStatus::Failed, "late"),
    );
    assert_eq!(r, Outcome::Changed(false));
    assert_eq!(before, serde_json::to_string(&s).expect("ser"));

    // A failure with nothing to roll back to is recorded, nothing more.
    upgrade_report(
        &mut s,
        9,
        "a",
        a,
        report("a", "h1", UpgradeStatus::Failed, "again"),
    );
    let app = &s.apps["app"];
    assert_eq!(app.code_hash, "h1");
    assert_eq!(app.upgrades["a"].error, "again");

    // The next upgrade clears the results and the error.
    let d = draft(vec![("c1", Placement::Any)], 3);
    let Outcome::App(app) = submit(&mut s, 10, version(d, "3.0.0"), "h3", true) else {
        panic!("upgrade refused")
    };
    assert!(app.upgrades.is_empty() && app.upgrade_error.is_empty());
}

#[test]
fn reports_from_stale_incarnations_are_refused() {
    let mut s = State::default();
    let old = join(&mut s, 1, "a", &[]);
    submit(&mut s, 2, draft(vec![("c", Placement::Any)], 3), "h", false);
    let new = join(&mut s, 3, "a", &[]);
    assert_ne!(old, new);
    let generation = s.assignments["app"]["c"].generation;
    let before = serde_json::to_string(&s).expect("ser");
    let r = upgrade_report(
        &mut s,
        4,
        "a",
        old,
        report("a", "h", UpgradeStatus::Failed, "x"),
    );
    assert!(
        matches!(r, Outcome::Rejected(Error::FailedPrecondition(_))),
        "{r:?}"
    );
    let r = apply(
        &mut s,
        5,
        0,
        Command::ChildFailed {
            node: "a".into(),
            incarnation: old,
            app: "app".into(),
            child: "c".into(),
            generation,
            error: "x".into(),
        },
    );
    assert!(
        matches!(r, Outcome::Rejected(Error::FailedPrecondition(_))),
        "{r:?}"
    );
    assert_eq!(before, serde_json::to_string(&s).expect("ser"));
}

#[test]
fn snapshots_from_before_rollback_still_load() {
    let mut s = State::default();
    join(&mut s, 1, "a", &[]);
    submit(&mut s, 2, draft(vec![("c", Placement::Any)], 3), "h", false);
    let mut json: serde_json::Value = serde_json::to_value(&s).expect("ser");
    let app = &mut json["apps"]["app"];
    let obj = app.as_object_mut().expect("object");
    for new_field in ["last_error", "upgrades", "upgrade_error"] {
        obj.remove(new_field);
    }
    obj.insert("previous".into(), serde_json::json!(["0.9", "h0"]));
    let old: State = serde_json::from_value(json).expect("an old snapshot loads");
    let app = &old.apps["app"];
    assert_eq!(
        app.previous, None,
        "a (version, hash) pair cannot be restored"
    );
    assert!(app.upgrades.is_empty() && app.last_error.is_empty());
}

#[test]
fn a_stop_removes_children_in_reverse_start_order() {
    let mut s = State::default();
    join(&mut s, 1, "a", &[]);
    let start_order = ["zulu", "alpha", "mike"];
    let d = draft(
        start_order.iter().map(|c| (*c, Placement::Any)).collect(),
        3,
    );
    submit(&mut s, 2, d, "h1", false);
    let (_, events) = apply_events(&mut s, 3, Command::StopApp { name: "app".into() });
    let removed: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::AssignmentRemoved { child, .. } => Some(child.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(removed, ["mike", "alpha", "zulu"]);
}

#[test]
fn a_node_death_while_starting_a_child_is_charged_to_that_app_alone() {
    let mut s = State::default();
    let zone = || Placement::Label("zone".into(), "shared".into());
    let mut inc = join(&mut s, 1, "a", &[("zone", "shared")]);
    let mut good = draft(vec![("g", zone())], 0);
    good.name = "good".into();
    submit(&mut s, 2, good, "hg", false);
    started_in(&mut s, 3, "good", "a", inc, "g", 1);
    let mut bad = draft(vec![("b", zone())], 1);
    bad.name = "bad".into();
    submit(&mut s, 4, bad, "hb", false);
    // The bad child kills its node while starting, each time the node comes back; the good
    // app's child is on the same node (and the second time, starting beside it).
    for (i, idx) in [10u64, 20].iter().enumerate() {
        declare_dead(&mut s, *idx, 1000 + 100 * i as u64, "a", inc);
        inc = join(&mut s, idx + 1, "a", &[("zone", "shared")]);
    }
    assert_eq!(s.apps["bad"].status, AppStatus::Failed);
    assert!(
        s.apps["bad"]
            .failure_reason
            .contains("died while starting child b"),
        "{}",
        s.apps["bad"].failure_reason
    );
    assert_eq!(s.apps["good"].status, AppStatus::Running);
    assert_eq!(s.apps["good"].restart_times, Vec::<u64>::new());
    assert_eq!(
        s.assignments["good"]["g"].node,
        Some(("a".into(), inc)),
        "the innocent app is placed again without manual action"
    );
}

#[test]
fn an_innocent_app_starting_beside_the_culprit_is_not_charged() {
    let mut s = State::default();
    let mut inc = join(&mut s, 1, "a", &[]);
    let mut good = draft(vec![("g", Placement::Any)], 0);
    good.name = "good".into();
    submit(&mut s, 2, good, "hg", false);
    let mut bad = draft(vec![("b", Placement::Any)], 1);
    bad.name = "bad".into();
    submit(&mut s, 3, bad, "hb", false);
    // Both children are starting on the node when it dies: no one can tell who killed it.
    let die = |s: &mut State, index: u64, inc: u64| declare_dead(s, index, 1000 + index, "a", inc);
    die(&mut s, 10, inc);
    assert_eq!(s.apps["good"].restart_times, Vec::<u64>::new());
    assert_eq!(s.apps["bad"].restart_times, Vec::<u64>::new());
    // Both are suspects now: on the node's return only one of them starts at a time.
    inc = join(&mut s, 11, "a", &[]);
    let placed = |s: &State| {
        s.all_assignments()
            .filter(|a| a.node.is_some())
            .map(|a| a.app.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(placed(&s), ["bad"]);
    die(&mut s, 12, inc);
    assert_eq!(
        s.apps["bad"].restart_times.len(),
        1,
        "the lone starter is charged"
    );
    inc = join(&mut s, 13, "a", &[]);
    assert_eq!(placed(&s), ["bad"]);
    die(&mut s, 14, inc);
    assert_eq!(s.apps["bad"].status, AppStatus::Failed);
    // The culprit gone, the innocent app starts (alone, then beside anything).
    inc = join(&mut s, 15, "a", &[]);
    assert_eq!(placed(&s), ["good"]);
    started_in(&mut s, 16, "good", "a", inc, "g", 1);
    assert_eq!(s.apps["good"].status, AppStatus::Running);
    assert_eq!(s.apps["good"].restart_times, Vec::<u64>::new());
}

#[test]
fn a_suspect_holds_back_other_starts_on_its_node_until_it_started() {
    let mut s = State::default();
    let inc = join(&mut s, 1, "a", &[]);
    let mut first = draft(vec![("x", Placement::Any)], 5);
    first.name = "first".into();
    submit(&mut s, 2, first, "h1", false);
    let mut second = draft(vec![("y", Placement::Any)], 5);
    second.name = "second".into();
    submit(&mut s, 3, second, "h2", false);
    declare_dead(&mut s, 4, 1000, "a", inc);
    let inc = join(&mut s, 5, "a", &[]);
    assert!(s.assignments["second"]["y"].node.is_none(), "held back");
    started_in(&mut s, 6, "first", "a", inc, "x", 1);
    assert_eq!(
        s.assignments["second"]["y"].node,
        Some(("a".into(), inc)),
        "placed once the suspect's start ended"
    );
}

#[test]
fn a_death_while_everything_ran_is_charged_to_every_app_on_the_node() {
    let mut s = State::default();
    let inc = join(&mut s, 1, "a", &[]);
    submit(&mut s, 2, draft(vec![("c", Placement::Any)], 3), "h", false);
    started(&mut s, 3, "a", inc, "c", 1);
    apply(
        &mut s,
        4,
        1000,
        Command::DeclareDead {
            node: "a".into(),
            incarnation: inc,
            reason: "lease".into(),
        },
    );
    assert_eq!(s.apps["app"].restart_times, vec![1000]);
}

#[test]
fn a_stopped_app_is_deleted_with_its_code_and_a_running_one_is_refused() {
    let mut s = State::default();
    join(&mut s, 1, "a", &[]);
    submit(&mut s, 2, draft(vec![("c", Placement::Any)], 3), "h", false);
    let refused = apply(&mut s, 3, 0, Command::DeleteApp { name: "app".into() });
    assert!(matches!(
        refused,
        Outcome::Rejected(Error::FailedPrecondition(_))
    ));
    apply(&mut s, 4, 0, Command::StopApp { name: "app".into() });
    assert_eq!(
        apply(&mut s, 5, 0, Command::DeleteApp { name: "app".into() }),
        Outcome::Done
    );
    assert!(s.apps.is_empty() && s.code.is_empty() && !s.assignments.contains_key("app"));
    let missing = apply(&mut s, 6, 0, Command::DeleteApp { name: "app".into() });
    assert!(matches!(missing, Outcome::Rejected(Error::NotFound(_))));
}
