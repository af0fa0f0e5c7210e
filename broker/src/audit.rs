//! The audit log's bound (`--audit-log-rate`): every refused sender and admin
//! request is an audit line (target `triggerfish::audit`), so a flood of bad
//! requests would write lines at request rate. [`AuditGate`] lets through at most
//! the rate (with a burst of one second's worth); the lines it holds back are
//! counted in `triggerfish_audit_lines_suppressed_total` and the next line that
//! passes says how many were suppressed before it. The refusals themselves are
//! always counted in their own metrics.

use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

/// Default of `--audit-log-rate`: audit lines per second.
pub const DEFAULT_AUDIT_LINES_PER_SECOND: u32 = 100;

#[derive(Debug)]
struct State {
    per_second: u32,
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

/// A token bucket for audit lines.
#[derive(Debug)]
pub struct AuditGate {
    state: Mutex<State>,
    suppressed: Counter,
}

impl AuditGate {
    /// A gate at the default rate, counting into `suppressed`.
    pub fn new(suppressed: Counter) -> AuditGate {
        AuditGate {
            state: Mutex::new(State {
                per_second: DEFAULT_AUDIT_LINES_PER_SECOND,
                tokens: f64::from(DEFAULT_AUDIT_LINES_PER_SECOND),
                at: Instant::now(),
                suppressed: 0,
            }),
            suppressed,
        }
    }

    /// Sets the rate (0: no bound).
    pub fn set_rate(&self, per_second: u32) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.per_second = per_second;
        s.tokens = f64::from(per_second);
    }

    /// Whether a line may be written now: `Some(n)` with the number of lines held
    /// back since the last one written, `None` (counted) when it must not.
    pub fn pass(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.per_second == 0 {
            return Some(0);
        }
        let now = Instant::now();
        let rate = f64::from(s.per_second);
        s.tokens = (s.tokens + now.duration_since(s.at).as_secs_f64() * rate).min(rate);
        s.at = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            self.suppressed.inc();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_beyond_the_rate_are_counted_and_reported() {
        let gate = AuditGate::new(Counter::default());
        gate.set_rate(3);
        let passed: Vec<Option<u64>> = (0..5).map(|_| gate.pass()).collect();
        assert_eq!(passed, [Some(0), Some(0), Some(0), None, None]);
        assert_eq!(gate.suppressed.get(), 2);
        // After a refill, the next line says what was held back.
        gate.state.lock().unwrap_or_else(|e| e.into_inner()).tokens = 1.0;
        assert_eq!(gate.pass(), Some(2));
        gate.set_rate(0);
        assert!((0..1000).all(|_| gate.pass() == Some(0)), "0: no bound");
    }
}
