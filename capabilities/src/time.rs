//! Timers that refuse what would panic. `tokio::time::interval` panics on a zero period, and
//! periods come from config: `.clippy.toml` disallows calling it directly, so every periodic
//! task goes through [`interval`] (config validation refuses zero periods first; this is the
//! last line, so a missed rule fails one task with an error instead of panicking a thread).

use std::time::Duration;

use crate::error::{Error, Result};

/// `tokio::time::interval(period)`, or an error naming `what` when `period` is zero.
pub fn interval(what: &str, period: Duration) -> Result<tokio::time::Interval> {
    if period.is_zero() {
        return Err(Error::InvalidArgument(format!(
            "{what}: a periodic task needs a period greater than 0"
        )));
    }
    #[allow(clippy::disallowed_methods, reason = "the checked wrapper itself")]
    let interval = tokio::time::interval(period);
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_zero_period_is_an_error_not_a_panic() {
        let e = interval("pubsub \"p\" redeliverInterval", Duration::ZERO)
            .expect_err("zero period")
            .to_string();
        assert!(e.starts_with("pubsub \"p\" redeliverInterval:"), "{e}");
        let mut t = interval("x", Duration::from_millis(1)).expect("1ms is fine");
        t.tick().await;
    }
}
