//! Unit tests of the core semantics, with a host that runs no code.

use super::*;
use parking_lot::Mutex;
use std::sync::Arc;

#[derive(Default)]
struct TestHost {
    exited: Mutex<Vec<(Pid, Reason)>>,
    routed: Mutex<Vec<Outbound<&'static str>>>,
    mail: Mutex<Vec<Pid>>,
    /// A process whose links and monitors `route` records as it sees them when a request
    /// leaves: a peer can answer before `route` returns.
    probe: Mutex<Option<Arc<Process<TestHost>>>>,
    seen_at_route: Mutex<Vec<(usize, usize)>>,
}

impl Host for TestHost {
    type Msg = &'static str;
    type Data = ();
    fn interrupt(&self, _process: &Arc<Process<Self>>) {}
    fn exited(&self, process: &Arc<Process<Self>>, reason: &Reason) {
        self.exited.lock().push((process.pid, reason.clone()));
    }
    fn route(&self, out: Outbound<Self::Msg>) -> Result<(), Outbound<Self::Msg>> {
        if let Some(p) = self.probe.lock().as_ref() {
            let st = p.lock();
            self.seen_at_route
                .lock()
                .push((st.links.len(), st.watching.len()));
        }
        self.routed.lock().push(out);
        Ok(())
    }
    fn mail_arrived(&self, process: &Arc<Process<Self>>) {
        self.mail.lock().push(process.pid);
    }
}

impl Payload for &'static str {
    fn bytes(&self) -> usize {
        self.len()
    }
}

fn rt() -> Runtime<TestHost> {
    Runtime::new("test", 7, TestHost::default())
}

fn spawn(rt: &Runtime<TestHost>) -> Arc<Process<TestHost>> {
    let p = rt.spawn(Kind::Server, None, ());
    rt.release(&p);
    p
}

fn crash() -> Reason {
    Reason::Crash(Arc::new(Crash {
        kind: "ValueError".into(),
        message: "boom".into(),
        traceback: String::new(),
    }))
}

#[test]
fn send_queues_an_idle_server_once() {
    let rt = rt();
    let p = spawn(&rt);
    rt.send(p.pid, Envelope::Info("a")).unwrap();
    rt.send(p.pid, Envelope::Info("b")).unwrap();
    let queued = rt.runq.try_pop().unwrap();
    assert_eq!(queued.pid, p.pid);
    assert!(rt.runq.try_pop().is_none(), "queued twice");
    assert!(matches!(rt.take_next(&queued), Some(Envelope::Info("a"))));
    assert_eq!(
        queued.lock().status,
        Status::Running,
        "the first take runs it"
    );
    assert!(matches!(rt.take_next(&queued), Some(Envelope::Info("b"))));
    assert!(rt.take_next(&queued).is_none());
    assert_eq!(
        queued.lock().status,
        Status::Idle,
        "the empty take ends the batch"
    );
    rt.send(p.pid, Envelope::Info("c")).unwrap();
    assert_eq!(
        rt.runq.try_pop().map(|q| q.pid),
        Some(p.pid),
        "mail after the batch queues it again"
    );
    assert!(rt.runq.try_pop().is_none(), "queued twice");
}

#[test]
fn mail_for_a_busy_process_tells_the_host_and_an_idle_one_is_queued_instead() {
    let rt = rt();
    let p = spawn(&rt);
    rt.send(p.pid, Envelope::Info("a")).unwrap();
    assert!(
        rt.host.mail.lock().is_empty(),
        "an idle server goes to the run queue"
    );
    let queued = rt.runq.try_pop().unwrap();
    assert!(rt.begin_batch(&queued));
    rt.send(p.pid, Envelope::Info("b")).unwrap();
    assert_eq!(*rt.host.mail.lock(), vec![p.pid]);
}

#[test]
fn waiting_for_work_takes_nothing_and_the_claim_counts_as_a_free_thread() {
    let rt = rt();
    let p = spawn(&rt);
    let soon = std::time::Instant::now() + std::time::Duration::from_millis(1);
    assert!(
        rt.runq.wait_for_work(soon, || true).is_none(),
        "nothing queued"
    );
    rt.send(p.pid, Envelope::Info("a")).unwrap();
    let (_, free_before, _) = rt.runq.pressure();
    let claim = rt
        .runq
        .wait_for_work(soon, || true)
        .expect("a server is queued");
    assert_eq!(
        rt.runq.pressure(),
        (1, free_before + 1, 0),
        "seen, not taken"
    );
    assert_eq!(rt.runq.try_pop().map(|q| q.pid), Some(p.pid));
    drop(claim);
    assert_eq!(rt.runq.pressure(), (0, free_before, 1));
}

#[test]
fn the_stall_monitor_waits_for_a_push_and_not_past_its_bound() {
    use std::time::{Duration, Instant};
    let rt = Arc::new(rt());
    let p = spawn(&rt);
    assert!(
        !rt.runq.wait_for_queued(Duration::from_millis(1)),
        "nothing queued: the bound ends the wait"
    );
    // Without a wake from the push, the wait would end only at its bound, with the server
    // queued by then: the bound is what tells the two apart.
    let bound = Duration::from_secs(30);
    let monitor = {
        let rt = rt.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            (rt.runq.wait_for_queued(bound), start.elapsed())
        })
    };
    while !rt.runq.monitor_parked() {
        std::thread::yield_now();
    }
    rt.send(p.pid, Envelope::Info("a")).unwrap();
    let (queued, waited) = monitor.join().unwrap();
    assert!(
        queued && waited < bound,
        "the push woke it (after {waited:?})"
    );
    assert!(!rt.runq.monitor_parked());
    assert!(
        rt.runq.wait_for_queued(Duration::from_secs(600)),
        "a server already queued: no wait"
    );
}

#[test]
fn reschedule_queues_a_running_server_with_an_empty_mailbox() {
    let rt = rt();
    let p = spawn(&rt);
    rt.send(p.pid, Envelope::Info("a")).unwrap();
    let queued = rt.runq.try_pop().unwrap();
    assert!(rt.take_next(&queued).is_some());
    rt.reschedule(&queued);
    assert_eq!(queued.lock().status, Status::Queued);
    assert_eq!(rt.runq.try_pop().map(|q| q.pid), Some(p.pid));
    rt.terminate(&p, Reason::Normal);
    rt.reschedule(&p);
    assert!(rt.runq.try_pop().is_none(), "a dead server is not queued");
}

#[test]
fn send_to_dead_process_is_undelivered() {
    let rt = rt();
    let p = spawn(&rt);
    rt.terminate(&p, Reason::Normal);
    assert_eq!(
        rt.send(p.pid, Envelope::Info("x")),
        Err(super::node::Undelivered)
    );
    assert_eq!(p.lock().mailbox.len(), 0);
}

#[test]
fn abnormal_exit_propagates_along_links_and_normal_does_not() {
    let rt = rt();
    let a = spawn(&rt);
    let b = spawn(&rt);
    let c = spawn(&rt);
    rt.link(&a, b.pid);
    rt.link(&b, c.pid);
    rt.terminate(&a, crash());
    assert!(b.is_exited() && c.is_exited());
    assert_eq!(c.exit_reason(), Some(crash()));

    let d = spawn(&rt);
    let e = spawn(&rt);
    rt.link(&d, e.pid);
    rt.terminate(&d, Reason::Normal);
    assert!(!e.is_exited());
    assert!(
        e.lock().links.is_empty(),
        "link to the dead process is gone"
    );
}

#[test]
fn trapping_turns_signals_into_messages_but_kill_is_untrappable() {
    let rt = rt();
    let a = spawn(&rt);
    let t = spawn(&rt);
    rt.set_trap_exit(&t, true);
    rt.link(&t, a.pid);
    rt.terminate(&a, Reason::Shutdown);
    assert!(!t.is_exited());
    let st = t.lock();
    assert!(matches!(
        st.mailbox.front(),
        Some(Envelope::Exit(s)) if s.from == a.pid && s.reason == Reason::Shutdown
    ));
    drop(st);
    rt.exit_signal(a.pid, t.pid, Reason::Kill);
    assert_eq!(t.exit_reason(), Some(Reason::Killed));
}

#[test]
fn killed_reason_reaches_links_as_killed() {
    let rt = rt();
    let a = spawn(&rt);
    let b = spawn(&rt);
    rt.link(&a, b.pid);
    rt.exit_signal(b.pid, a.pid, Reason::Kill);
    assert_eq!(b.exit_reason(), Some(Reason::Killed));
}

#[test]
fn linking_to_a_dead_process_delivers_noproc() {
    let rt = rt();
    let a = spawn(&rt);
    let dead = spawn(&rt);
    rt.terminate(&dead, Reason::Normal);
    rt.link(&a, dead.pid);
    assert_eq!(a.exit_reason(), Some(Reason::Noproc));
}

#[test]
fn monitor_fires_once_and_noproc_for_dead_targets() {
    let rt = rt();
    let w = spawn(&rt);
    let t = spawn(&rt);
    let r = rt.monitor(&w, t.pid);
    rt.terminate(&t, crash());
    rt.terminate(&t, Reason::Normal);
    let downs: Vec<_> = w.lock().mailbox.drain(..).collect();
    assert_eq!(downs.len(), 1);
    assert!(
        matches!(&downs[0], Envelope::Down(d) if d.mref == r && d.pid == t.pid && d.reason == crash())
    );
    let r2 = rt.monitor(&w, t.pid);
    assert!(
        matches!(w.lock().mailbox.front(), Some(Envelope::Down(d)) if d.mref == r2 && d.reason == Reason::Noproc)
    );
}

#[test]
fn demonitor_stops_the_down_message() {
    let rt = rt();
    let w = spawn(&rt);
    let t = spawn(&rt);
    let r = rt.monitor(&w, t.pid);
    assert!(rt.demonitor(&w, r));
    assert!(!rt.demonitor(&w, r));
    rt.terminate(&t, crash());
    assert!(w.lock().mailbox.is_empty());
}

#[test]
fn names_are_released_on_exit_and_unique() {
    let rt = rt();
    let a = spawn(&rt);
    let b = spawn(&rt);
    rt.register("svc", a.pid).unwrap();
    assert_eq!(rt.register("svc", b.pid), Err(RegistryError::Taken(a.pid)));
    assert!(matches!(
        rt.register("other", a.pid),
        Err(RegistryError::AlreadyNamed(_))
    ));
    rt.terminate(&a, Reason::Normal);
    assert_eq!(rt.whereis("svc"), None);
    rt.register("svc", b.pid).unwrap();
    assert_eq!(rt.whereis("svc"), Some(b.pid));
}

#[test]
fn pending_calls_fail_with_the_callee_reason() {
    let rt = rt();
    let callee = spawn(&rt);
    let slot = Arc::new(CallSlot::new(None));
    rt.send(
        callee.pid,
        Envelope::Call {
            request: "get",
            slot: slot.clone(),
        },
    )
    .unwrap();
    rt.terminate(&callee, Reason::Shutdown);
    assert!(matches!(
        slot.wait(None),
        Some(CallResult::Exit(Reason::Shutdown))
    ));
}

#[test]
fn host_learns_of_every_exit() {
    let rt = rt();
    let a = spawn(&rt);
    let b = spawn(&rt);
    rt.link(&a, b.pid);
    rt.terminate(&a, crash());
    let exited = rt.host.exited.lock();
    assert_eq!(exited.len(), 2);
    assert_eq!(rt.process_count(), 0);
}

fn remote(serial: u64) -> Pid {
    Pid {
        node: NodeId::intern("peer"),
        incarnation: 1,
        serial,
    }
}

#[test]
fn remote_operations_are_routed_to_the_peer() {
    let rt = rt();
    let a = spawn(&rt);
    rt.link(&a, remote(1));
    let r = rt.monitor(&a, remote(2));
    rt.send(remote(3), Envelope::Info("hi")).unwrap();
    rt.terminate(&a, crash());
    let routed = rt.host.routed.lock();
    let sent = |check: &dyn Fn(&Outbound<&'static str>) -> bool| routed.iter().any(check);
    assert!(
        sent(&|o| matches!(o, Outbound::Link { from, to } if *from == a.pid && *to == remote(1))),
        "{routed:?}"
    );
    assert!(
        sent(&|o| matches!(o, Outbound::Monitor { watcher, target, mref }
            if *watcher == a.pid && *target == remote(2) && *mref == r)),
        "{routed:?}"
    );
    assert!(
        sent(
            &|o| matches!(o, Outbound::Message { to, envelope: Envelope::Info("hi") }
            if *to == remote(3))
        ),
        "{routed:?}"
    );
    assert!(
        sent(
            &|o| matches!(o, Outbound::Exit { from, to, reason, link: true }
            if *from == a.pid && *to == remote(1) && *reason == crash())
        ),
        "{routed:?}"
    );
    assert!(
        sent(
            &|o| matches!(o, Outbound::Demonitor { watcher, target, mref }
            if *watcher == a.pid && *target == remote(2) && *mref == r)
        ),
        "{routed:?}"
    );
}

#[test]
fn node_down_fires_noconnection_on_links_and_monitors() {
    let rt = rt();
    let linked = spawn(&rt);
    let watcher = spawn(&rt);
    rt.link(&linked, remote(1));
    let r = rt.monitor(&watcher, remote(2));
    rt.node_down(NodeId::intern("peer"));
    assert_eq!(linked.exit_reason(), Some(Reason::Noconnection));
    assert!(
        matches!(watcher.lock().mailbox.front(), Some(Envelope::Down(d)) if d.mref == r && d.reason == Reason::Noconnection)
    );
}

#[test]
fn remote_exit_along_a_link_kills_and_remote_down_delivers_once() {
    let rt = rt();
    let a = spawn(&rt);
    rt.link(&a, remote(1));
    rt.remote_exit(remote(9), a.pid, crash(), true);
    assert!(
        !a.is_exited(),
        "an exit along a link that does not exist is ignored"
    );
    rt.remote_exit(remote(1), a.pid, crash(), true);
    assert_eq!(a.exit_reason(), Some(crash()));

    let w = spawn(&rt);
    let r = rt.monitor(&w, remote(2));
    rt.remote_down(w.pid, remote(2), r, Reason::Normal);
    rt.remote_down(w.pid, remote(2), r, Reason::Normal);
    assert_eq!(w.lock().mailbox.len(), 1);
}

#[test]
fn remote_link_to_a_dead_process_answers_noproc() {
    let rt = rt();
    let dead = spawn(&rt);
    rt.terminate(&dead, Reason::Normal);
    rt.remote_link(remote(1), dead.pid);
    let routed = rt.host.routed.lock();
    assert!(
        routed.iter().any(
            |o| matches!(o, Outbound::Exit { from, to, reason: Reason::Noproc, link: true }
            if *from == dead.pid && *to == remote(1))
        ),
        "{routed:?}"
    );
}

#[test]
fn remote_links_and_monitors_are_recorded_before_their_requests_leave() {
    // The peer's noproc answer for a dead target may arrive before `route` returns; it
    // fires only a recorded link or monitor, so both must be recorded first.
    let rt = rt();
    let w = spawn(&rt);
    w.lock().trap_exit = true;
    *rt.host.probe.lock() = Some(w.clone());
    rt.link(&w, remote(5));
    let mref = rt.monitor(&w, remote(6));
    assert_eq!(*rt.host.seen_at_route.lock(), vec![(1, 0), (1, 1)]);
    *rt.host.probe.lock() = None;
    rt.remote_down(w.pid, remote(6), mref, Reason::Noproc);
    rt.remote_exit(remote(5), w.pid, Reason::Noproc, true);
    let st = w.lock();
    assert!(st.watching.is_empty() && st.links.is_empty());
    assert_eq!(st.mailbox.len(), 2, "Down and Exit both delivered");
}

/// Runs `a` and `b` at once on two threads, many times over fresh state from `setup`.
fn race<S: Sync>(
    rounds: usize,
    setup: impl Fn() -> S,
    a: impl Fn(&S) + Sync,
    b: impl Fn(&S) + Sync,
    check: impl Fn(&S),
) {
    for _ in 0..rounds {
        let state = setup();
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                start.wait();
                a(&state);
            });
            start.wait();
            b(&state);
        });
        check(&state);
    }
}

#[test]
fn a_link_racing_the_callers_death_is_never_half_made() {
    // However the caller's kill interleaves with its link call, the target ends up
    // killed by the caller's exit, never alive holding a link to a dead process.
    race(
        2000,
        || {
            let rt = rt();
            let (a, b) = (spawn(&rt), spawn(&rt));
            (rt, a, b)
        },
        |(rt, a, b)| rt.link(a, b.pid),
        |(rt, a, _)| rt.terminate(a, crash()),
        |(_, a, b)| {
            assert_eq!(
                b.exit_reason(),
                Some(crash()),
                "links of b: {:?}",
                b.lock().links
            );
            assert!(a.lock().links.is_empty() || a.is_exited());
        },
    );
}

#[test]
fn a_link_from_a_caller_killed_before_it_links_still_fires() {
    // The window above made deterministic: the caller is already dead when its thread
    // (not yet interrupted) links.
    let rt = rt();
    let (a, b) = (spawn(&rt), spawn(&rt));
    rt.terminate(&a, crash());
    rt.link(&a, b.pid);
    assert_eq!(b.exit_reason(), Some(crash()));
}

#[test]
fn a_monitor_racing_the_targets_exit_gets_exactly_one_down() {
    race(
        2000,
        || {
            let rt = rt();
            let (watcher, target) = (spawn(&rt), spawn(&rt));
            let mref = Mutex::new(None);
            (rt, watcher, target, mref)
        },
        |(rt, watcher, target, mref)| *mref.lock() = Some(rt.monitor(watcher, target.pid)),
        |(rt, _, target, _)| rt.terminate(target, crash()),
        |(_, watcher, target, mref)| {
            let mref = mref.lock().expect("monitor returned");
            let downs: Vec<_> = watcher
                .lock()
                .mailbox
                .iter()
                .filter_map(|e| match e {
                    Envelope::Down(d) if d.mref == mref && d.pid == target.pid => {
                        Some(d.reason.clone())
                    }
                    _ => None,
                })
                .collect();
            // Crash when the monitor came first, noproc when the exit did: once either way.
            assert!(
                downs == [crash()] || downs == [Reason::Noproc],
                "downs: {downs:?}"
            );
        },
    );
}

#[test]
fn a_delivery_past_the_message_limit_kills_the_receiver_with_mailbox_limit() {
    let rt = rt();
    let limit = MailboxLimit {
        messages: 2,
        bytes: 0,
    };
    let p = rt.spawn_with(Kind::Server, None, (), limit);
    rt.release(&p);
    let linked = spawn(&rt);
    rt.set_trap_exit(&linked, true);
    rt.link(&linked, p.pid);
    rt.send(p.pid, Envelope::Info("a")).unwrap();
    rt.send(p.pid, Envelope::Info("b")).unwrap();
    assert!(!p.is_exited());
    let slot = Arc::new(CallSlot::new(None));
    let over = Envelope::Call {
        request: "c",
        slot: slot.clone(),
    };
    assert!(
        rt.send(p.pid, over).is_ok(),
        "the send itself does not fail"
    );
    assert_eq!(p.exit_reason(), Some(Reason::MailboxLimit));
    assert!(matches!(
        slot.wait(None),
        Some(CallResult::Exit(Reason::MailboxLimit))
    ));
    assert!(matches!(
        linked.lock().mailbox.back(),
        Some(Envelope::Exit(s)) if s.from == p.pid && s.reason == Reason::MailboxLimit
    ));
    assert_eq!(
        Reason::from_atom("mailbox_limit"),
        Some(Reason::MailboxLimit)
    );
}

#[test]
fn taken_messages_stop_counting_against_the_byte_limit() {
    let rt = rt();
    let envelope = std::mem::size_of::<Envelope<&'static str>>();
    let limit = MailboxLimit {
        messages: 0,
        bytes: 2 * (envelope + 4),
    };
    let p = rt.spawn_with(Kind::Server, None, (), limit);
    rt.release(&p);
    for _ in 0..10 {
        rt.send(p.pid, Envelope::Info("1234")).unwrap();
        rt.send(p.pid, Envelope::Info("5678")).unwrap();
        assert!(!p.is_exited(), "two messages fit");
        let queued = rt.runq.try_pop().unwrap();
        while rt.take_next(&queued).is_some() {}
        let st = p.lock();
        assert_eq!((st.queued, st.queued_bytes), (0, 0));
    }
    rt.send(p.pid, Envelope::Info("1234")).unwrap();
    rt.send(p.pid, Envelope::Info("5678")).unwrap();
    rt.send(p.pid, Envelope::Info("x")).unwrap();
    assert_eq!(p.exit_reason(), Some(Reason::MailboxLimit));
}

#[test]
fn the_default_limit_applies_to_spawns_without_their_own() {
    let rt = rt();
    rt.set_default_mailbox_limit(MailboxLimit {
        messages: 1,
        bytes: 0,
    });
    let p = spawn(&rt);
    rt.send(p.pid, Envelope::Info("a")).unwrap();
    rt.send(p.pid, Envelope::Info("b")).unwrap();
    assert_eq!(p.exit_reason(), Some(Reason::MailboxLimit));
    let unbounded = rt.spawn_with(Kind::Server, None, (), MailboxLimit::UNBOUNDED);
    for _ in 0..1000 {
        rt.send(unbounded.pid, Envelope::Info("a")).unwrap();
    }
    assert!(!unbounded.is_exited());
}

#[test]
fn a_repeated_send_to_a_process_that_died_is_dropped_and_lets_the_process_go() {
    let rt = rt();
    let p = spawn(&rt);
    rt.send(p.pid, Envelope::Info("a")).unwrap();
    // The test, the table, the run queue and the thread's last target hold it.
    assert_eq!(Arc::strong_count(&p), 4);
    rt.terminate(&p, Reason::Killed);
    assert!(
        rt.send(p.pid, Envelope::Info("b")).is_err(),
        "delivered to the dead"
    );
    assert_eq!(
        Arc::strong_count(&p),
        2,
        "the dead process is still the last target"
    );
}

#[test]
fn a_thread_lets_go_of_its_last_target_before_it_parks() {
    let rt = rt();
    let p = spawn(&rt);
    rt.send(p.pid, Envelope::Info("a")).unwrap();
    let held = Arc::strong_count(&p);
    node::forget_last_target();
    assert_eq!(Arc::strong_count(&p), held - 1);
}

#[test]
fn sends_to_two_runtimes_alike_pids_reach_each_its_own_process() {
    // Two runtimes of one node name and incarnation: the same pid names a process in each,
    // and a thread's last target must not carry over from one to the other.
    let (a, b) = (rt(), rt());
    let (pa, pb) = (spawn(&a), spawn(&b));
    assert_eq!(pa.pid, pb.pid);
    a.send(pa.pid, Envelope::Info("to a")).unwrap();
    b.send(pb.pid, Envelope::Info("to b")).unwrap();
    assert!(matches!(
        pa.lock().mailbox.front(),
        Some(Envelope::Info("to a"))
    ));
    assert_eq!(pa.lock().mailbox.len(), 1);
    assert!(matches!(
        pb.lock().mailbox.front(),
        Some(Envelope::Info("to b"))
    ));
}
