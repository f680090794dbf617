//! Retry policies: which failures are retried, how often, and the backoff between tries.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryPolicyConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_5xx: bool,
    pub retriable_status_codes: Vec<u16>,
    /// gRPC status codes (from a trailers-only answer) that are retried.
    pub retriable_grpc_codes: Vec<i32>,
    pub num_retries: u32,
    pub base_interval: Duration,
    pub max_interval: Duration,
    /// Retry non-idempotent methods after they may have reached the upstream.
    pub retry_non_idempotent: bool,
}

impl RetryPolicy {
    /// Errors are `field: message` (the caller adds the path).
    pub fn build(cfg: &RetryPolicyConfig) -> Result<Self, String> {
        let mut p = RetryPolicy {
            on_connect_failure: false,
            on_reset: false,
            on_5xx: false,
            retriable_status_codes: cfg.retriable_status_codes.clone(),
            retriable_grpc_codes: Vec::new(),
            num_retries: cfg.num_retries,
            base_interval: cfg.base_interval.0,
            max_interval: cfg.max_interval.0,
            retry_non_idempotent: cfg.retry_non_idempotent,
        };
        for (i, on) in cfg.retry_on.iter().enumerate() {
            match on.as_str() {
                "connect-failure" => p.on_connect_failure = true,
                "reset" => p.on_reset = true,
                "5xx" => p.on_5xx = true,
                // The codes themselves come from `retriable_status_codes`.
                "retriable-status-codes" => {}
                // gRPC conditions, as Envoy names them (trailers-only answers).
                "cancelled" => p.retriable_grpc_codes.push(1),
                "deadline-exceeded" => p.retriable_grpc_codes.push(4),
                "resource-exhausted" => p.retriable_grpc_codes.push(8),
                "internal" => p.retriable_grpc_codes.push(13),
                "unavailable" => p.retriable_grpc_codes.push(14),
                other => {
                    return Err(format!(
                        "retry_on[{i}]: unknown condition {other:?} (known: connect-failure, \
                         reset, 5xx, retriable-status-codes, cancelled, deadline-exceeded, \
                         resource-exhausted, internal, unavailable)"
                    ))
                }
            }
        }
        if p.num_retries > 10 {
            return Err(format!("num_retries: at most 10, got {}", p.num_retries));
        }
        if p.base_interval > p.max_interval {
            return Err("base_interval: must not exceed max_interval".to_owned());
        }
        Ok(p)
    }

    pub fn retries_grpc(&self, code: i32) -> bool {
        self.retriable_grpc_codes.contains(&code)
    }

    pub fn retries_status(&self, status: u16) -> bool {
        (self.on_5xx && (500..600).contains(&status))
            || self.retriable_status_codes.contains(&status)
    }

    /// Full-jitter exponential backoff before retry number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_interval
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_interval);
        let nanos = exp.as_nanos().min(u64::MAX as u128) as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn cfg(on: &[&str]) -> RetryPolicyConfig {
        RetryPolicyConfig {
            retry_on: on.iter().map(|s| s.to_string()).collect(),
            num_retries: 2,
            retriable_status_codes: vec![429],
            base_interval: Dur(Duration::from_millis(10)),
            max_interval: Dur(Duration::from_millis(40)),
            retry_non_idempotent: false,
        }
    }

    #[test]
    fn conditions_parse_and_unknown_ones_are_named() {
        let p = RetryPolicy::build(&cfg(&["5xx", "reset"])).expect("valid");
        assert!(p.on_5xx && p.on_reset && !p.on_connect_failure);
        assert!(p.retries_status(503) && p.retries_status(429) && !p.retries_status(404));
        let g = RetryPolicy::build(&cfg(&["unavailable", "resource-exhausted"])).expect("valid");
        assert!(g.retries_grpc(14) && g.retries_grpc(8) && !g.retries_grpc(13));
        let e = RetryPolicy::build(&cfg(&["gateway-error"])).expect_err("unknown");
        assert!(
            e.contains("retry_on[0]") && e.contains("gateway-error"),
            "{e}"
        );
    }

    #[test]
    fn backoff_is_capped() {
        let p = RetryPolicy::build(&cfg(&["5xx"])).expect("valid");
        for attempt in 1..20 {
            assert!(p.backoff(attempt) <= Duration::from_millis(40));
        }
    }
}
