//! The retry policy as a pure function: what follows an attempt, decided from its outcome,
//! how many attempts the task has had, how long the endpoint has been failing, the config
//! and the time. No I/O and no clock of its own, so every branch has a unit test.

use std::time::Duration;

use super::deliver::Outcome;
use super::model::AttemptStatus;

/// What happens after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    /// The receiver answered 410 Gone: disable the endpoint.
    Gone,
    /// The endpoint has been failing for longer than `disable_after`: disable it.
    FailingTooLong,
    /// Try again at this time (ms since the epoch).
    Retry {
        at_ms: u64,
    },
    /// The schedule is used up: the task fails (kept, replayable).
    Exhausted,
}

impl Decision {
    pub fn status(self) -> AttemptStatus {
        match self {
            Decision::Delivered => AttemptStatus::Delivered,
            Decision::Gone | Decision::FailingTooLong => AttemptStatus::Disabled,
            Decision::Retry { .. } => AttemptStatus::Retrying,
            Decision::Exhausted => AttemptStatus::Failed,
        }
    }
}

/// The policy's inputs besides the outcome.
pub struct Policy<'a> {
    /// Delay before the 2nd, 3rd, ... attempt.
    pub schedule: &'a [Duration],
    pub disable_after: Duration,
}

/// Decides what follows attempt number `attempts_before + 1`. `failing_since_ms` is when the
/// endpoint's current run of failures began (None: this failure starts one, now); `jitter`
/// spreads a scheduled delay (not a receiver's `Retry-After`, which is honoured as given).
pub fn decide(
    outcome: &Outcome,
    attempts_before: u32,
    failing_since_ms: Option<u64>,
    policy: &Policy,
    now_ms: u64,
    jitter: impl FnOnce(Duration) -> Duration,
) -> Decision {
    if outcome.delivered() {
        return Decision::Delivered;
    }
    if outcome.gone() {
        return Decision::Gone;
    }
    let failing_for = now_ms.saturating_sub(failing_since_ms.unwrap_or(now_ms));
    if failing_for >= policy.disable_after.as_millis() as u64 {
        return Decision::FailingTooLong;
    }
    match policy.schedule.get(attempts_before as usize) {
        Some(delay) => {
            let delay = outcome.retry_after.unwrap_or_else(|| jitter(*delay));
            Decision::Retry {
                at_ms: now_ms.saturating_add(delay.as_millis() as u64),
            }
        }
        None => Decision::Exhausted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn outcome(status: Option<u16>, retry_after: Option<Duration>) -> Outcome {
        Outcome {
            status,
            error: status.is_none().then(|| "timed out".to_string()),
            duration: Duration::ZERO,
            retry_after,
            body: None,
        }
    }

    fn policy() -> Policy<'static> {
        static SCHEDULE: [Duration; 2] = [Duration::from_secs(5), Duration::from_secs(300)];
        Policy {
            schedule: &SCHEDULE,
            disable_after: Duration::from_secs(3600),
        }
    }

    /// `decide` with no jitter at 1,000,000 ms.
    fn at(o: &Outcome, attempts_before: u32, failing_since: Option<u64>) -> Decision {
        decide(
            o,
            attempts_before,
            failing_since,
            &policy(),
            1_000_000,
            |d| d,
        )
    }

    #[test]
    fn success_and_gone_end_the_task() {
        for code in [200, 204, 299] {
            assert_eq!(
                at(&outcome(Some(code), None), 3, Some(0)),
                Decision::Delivered
            );
        }
        let gone = at(&outcome(Some(410), None), 0, None);
        assert_eq!(
            (gone, gone.status()),
            (Decision::Gone, AttemptStatus::Disabled)
        );
    }

    #[test]
    fn failures_follow_the_schedule_then_exhaust() {
        for failure in [
            outcome(Some(500), None),
            outcome(Some(302), None),
            outcome(None, None),
        ] {
            assert_eq!(
                at(&failure, 0, None),
                Decision::Retry {
                    at_ms: 1_000_000 + 5_000
                }
            );
            assert_eq!(
                at(&failure, 1, Some(999_000)),
                Decision::Retry {
                    at_ms: 1_000_000 + 300_000
                }
            );
            let done = at(&failure, 2, Some(999_000));
            assert_eq!(
                (done, done.status()),
                (Decision::Exhausted, AttemptStatus::Failed)
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503() {
        for code in [429, 503] {
            let o = outcome(Some(code), Some(7 * S));
            assert_eq!(
                at(&o, 0, None),
                Decision::Retry {
                    at_ms: 1_000_000 + 7_000
                }
            );
        }
        // Retry-After does not extend the schedule.
        assert_eq!(
            at(&outcome(Some(503), Some(7 * S)), 2, None),
            Decision::Exhausted
        );
    }

    #[test]
    fn jitter_applies_to_the_schedule_only() {
        let doubled = |d: Duration| d * 2;
        let plain = outcome(Some(500), None);
        assert_eq!(
            decide(&plain, 0, None, &policy(), 0, doubled),
            Decision::Retry { at_ms: 10_000 }
        );
        let told = outcome(Some(429), Some(S));
        assert_eq!(
            decide(&told, 0, None, &policy(), 0, doubled),
            Decision::Retry { at_ms: 1_000 }
        );
    }

    #[test]
    fn failing_longer_than_disable_after_disables() {
        let o = outcome(Some(500), None);
        let now = 5_000_000;
        let since = now - 3_600_000;
        let d = decide(&o, 0, Some(since), &policy(), now, |d| d);
        assert_eq!(
            (d, d.status()),
            (Decision::FailingTooLong, AttemptStatus::Disabled)
        );
        assert!(matches!(
            decide(&o, 0, Some(since + 1), &policy(), now, |d| d),
            Decision::Retry { .. }
        ));
        // A success is a success however long the run of failures was.
        let ok = outcome(Some(200), None);
        assert_eq!(
            decide(&ok, 0, Some(0), &policy(), now, |d| d),
            Decision::Delivered
        );
    }

    #[test]
    fn statuses_round_trip_their_wire_names() {
        for s in AttemptStatus::ALL {
            assert_eq!(AttemptStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(AttemptStatus::parse("nope"), None);
    }
}
