//! The Monitor driven with scripted time: no clock, no files, no tokio.

use super::*;
use crate::diagnose::testutil::{self, snapshot};
use crate::observe::envoy_log::{EntryAssembler, LogEntry};

/// Scripted time: `t(s)` is `s` seconds after the script's start, on both clocks.
struct Clock {
    start: Instant,
    wall: SystemTime,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    fn t(&self, secs: u64) -> (Instant, SystemTime) {
        let d = Duration::from_secs(secs);
        (self.start + d, self.wall + d)
    }
}

fn monitor() -> Monitor {
    Monitor::new(testutil::settings())
}

fn cycle(m: &mut Monitor, snap: Snapshot, at: (Instant, SystemTime)) -> Actions {
    m.cycle(snap, CycleOutcome::default(), false, at, |_, _| {})
}

fn raised(a: &Actions) -> Vec<FindingId> {
    a.events
        .iter()
        .filter_map(|e| match e {
            Event::FindingRaised(f) => Some(f.id),
            _ => None,
        })
        .collect()
}

fn cleared(a: &Actions) -> Vec<FindingId> {
    a.events
        .iter()
        .filter_map(|e| match e {
            Event::FindingCleared(id) => Some(*id),
            _ => None,
        })
        .collect()
}

fn failures(a: &Actions) -> Vec<&Transition> {
    a.events
        .iter()
        .filter_map(|e| match e {
            Event::Failure(t) => Some(t),
            _ => None,
        })
        .collect()
}

fn admin_down() -> Snapshot {
    let mut s = snapshot();
    s.server_info = Err(testutil::admin_down());
    s
}

#[test]
fn a_finding_transition_is_logged_once_and_its_end_once() {
    let clock = Clock::new();
    let mut m = monitor();
    let first = cycle(&mut m, admin_down(), clock.t(0));
    assert_eq!(raised(&first), vec![FindingId::EnvoyAdminUnreachable]);
    let publication = first.publication.as_ref().unwrap();
    assert!(publication.findings.contains("ENVOY_ADMIN_UNREACHABLE"));
    assert_eq!(publication.proxy_state, "UNREACHABLE");

    let second = cycle(&mut m, admin_down(), clock.t(10));
    assert!(raised(&second).is_empty(), "{:?}", second.events);
    assert!(cleared(&second).is_empty(), "{:?}", second.events);

    let healthy = cycle(&mut m, snapshot(), clock.t(20));
    assert_eq!(cleared(&healthy), vec![FindingId::EnvoyAdminUnreachable]);
    assert!(raised(&healthy).is_empty(), "{:?}", healthy.events);
    let again = cycle(&mut m, snapshot(), clock.t(30));
    assert!(cleared(&again).is_empty(), "{:?}", again.events);
}

#[test]
fn a_failure_recovered_is_said_once_and_raised_again_when_it_returns() {
    let clock = Clock::new();
    let mut m = monitor();
    let down = || {
        let mut s = snapshot();
        s.vm = Err(testutil::metadata_down());
        s
    };
    let a = cycle(&mut m, down(), clock.t(0));
    assert!(matches!(
        failures(&a).as_slice(),
        [Transition::Raised {
            source: FailureSource::Metadata,
            ..
        }]
    ));
    assert!(a.failed.contains(&FailureSource::Metadata));
    let last = a.last_failure.as_deref().unwrap();
    assert!(
        last.starts_with("2027-01-15T08:00:00Z cannot read the VM's metadata"),
        "{last}"
    );

    // Persisting: counted again, not logged nor written again.
    let b = cycle(&mut m, down(), clock.t(10));
    assert!(failures(&b).is_empty(), "{:?}", b.events);
    assert!(b.failed.contains(&FailureSource::Metadata));
    assert_eq!(b.last_failure, None);

    let c = cycle(&mut m, snapshot(), clock.t(20));
    assert!(matches!(
        failures(&c).as_slice(),
        [Transition::Recovered {
            source: FailureSource::Metadata,
            ..
        }]
    ));
    assert!(c.failed.is_empty());

    let d = cycle(&mut m, down(), clock.t(30));
    assert!(matches!(
        failures(&d).as_slice(),
        [Transition::Raised {
            source: FailureSource::Metadata,
            ..
        }]
    ));
    assert!(d.last_failure.unwrap().starts_with("2027-01-15T08:00:30Z "));
}

#[test]
fn an_interception_plan_failure_recovers_when_a_plan_is_made() {
    let clock = Clock::new();
    let mut m = monitor();
    let failing = CycleOutcome {
        reconcile: Some(Err("more than the 10000 ranges".into())),
        ignored: Vec::new(),
    };
    let a = m.cycle(snapshot(), failing, false, clock.t(0), |_, _| {});
    assert!(matches!(
        failures(&a).as_slice(),
        [Transition::Raised {
            source: FailureSource::Interception,
            ..
        }]
    ));
    let ok = CycleOutcome {
        reconcile: Some(Ok(ReconcileReport {
            v4: crate::intercept::apply::FamilyOutcome::Skipped,
            v6: crate::intercept::apply::FamilyOutcome::Skipped,
            saves: 1,
            restores: 0,
        })),
        ignored: Vec::new(),
    };
    let b = m.cycle(snapshot(), ok, false, clock.t(10), |_, _| {});
    assert!(matches!(
        failures(&b).as_slice(),
        [Transition::Recovered {
            source: FailureSource::Interception,
            ..
        }]
    ));
}

fn rejected_entry() -> LogEntry {
    let mut out = Vec::new();
    let mut a = EntryAssembler::default();
    a.feed(
        b"[2027-01-15 08:00:05.000][1][warning][config] [x.cc:1] gRPC config for \
          type.googleapis.com/envoy.config.listener.v3.Listener rejected: bad listener\n",
        &mut out,
    );
    a.finish(&mut out);
    out.pop().unwrap()
}

#[test]
fn a_log_driven_rediagnosis_publishes_without_a_heartbeat() {
    let clock = Clock::new();
    let mut m = monitor();
    // Before any cycle there is nothing to judge the logs against.
    assert!(m.rediagnose(clock.t(0).0, |_, _| {}).publication.is_none());

    let first = cycle(&mut m, snapshot(), clock.t(0));
    let p = first.publication.unwrap();
    assert_eq!(p.heartbeat.as_deref(), Some("2027-01-15T08:00:00Z"));
    assert!(p.cycle.is_some());

    let (now, wall) = clock.t(5);
    let logged = m.log_event(EntryEvent::Entry(Box::new(rejected_entry())), now, wall);
    assert!(logged.rediagnose_soon);
    assert!(logged.publication.is_none());

    let again = m.rediagnose(now, |_, _| {});
    let p = again.publication.as_ref().unwrap();
    assert_eq!(p.heartbeat, None);
    assert!(p.cycle.is_none());
    assert_eq!(raised(&again), vec![FindingId::ConfigRejected]);
}

#[test]
fn the_control_plane_is_checked_every_cycle_only_while_disconnected() {
    let clock = Clock::new();
    let mut m = monitor();
    assert!(m.control_plane_due(clock.t(0).0));
    cycle(&mut m, snapshot(), clock.t(0));
    assert!(!m.control_plane_due(clock.t(10).0));
    assert!(!m.control_plane_due(clock.t(299).0));
    assert!(m.control_plane_due(clock.t(300).0));
    assert!(!m.control_plane_due(clock.t(310).0));

    let mut down = snapshot();
    down.stats.as_mut().unwrap().control_plane_connected_state = Some(0);
    cycle(&mut m, down.clone(), clock.t(320));
    for s in [330, 340, 350] {
        assert!(m.control_plane_due(clock.t(s).0), "at {s}s");
        cycle(&mut m, down.clone(), clock.t(s));
    }
    // Connected again (the new stream carried a listener update): back to the slow cadence
    // from the last check.
    let mut up = snapshot();
    up.stats.as_mut().unwrap().lds_update_success = Some(2);
    cycle(&mut m, up, clock.t(360));
    assert!(!m.control_plane_due(clock.t(370).0));
    assert!(m.control_plane_due(clock.t(650).0));
}

#[test]
fn the_log_directory_going_and_coming_back_is_said_once_each() {
    let clock = Clock::new();
    let mut m = monitor();
    let (now, wall) = clock.t(0);
    let gone = || EntryEvent::DirUnavailable {
        dir: "/var/log/envoy".into(),
        reason: "No such file or directory".into(),
    };
    let a = m.log_event(gone(), now, wall);
    assert!(matches!(
        failures(&a).as_slice(),
        [Transition::Raised {
            source: FailureSource::EnvoyLog,
            ..
        }]
    ));
    assert!(!a.rediagnose_soon);
    assert!(failures(&m.log_event(gone(), now, wall)).is_empty());
    let back = m.log_event(
        EntryEvent::DirAvailable {
            dir: "/var/log/envoy".into(),
        },
        now,
        wall,
    );
    assert!(matches!(
        back.events.first(),
        Some(Event::LogDirAvailable(_))
    ));
    assert!(matches!(
        failures(&back).as_slice(),
        [Transition::Recovered {
            source: FailureSource::EnvoyLog,
            ..
        }]
    ));
    assert!(!m.log_event(EntryEvent::CaughtUp, now, wall).rediagnose_soon);
}
