//! The one place a building-block [`Error`] becomes a gRPC [`Status`].
//!
//! | `mecha_capabilities::Error` | gRPC code             | why                                        |
//! |-----------------------------|-----------------------|--------------------------------------------|
//! | `InvalidArgument`           | `INVALID_ARGUMENT`    | bad request, unknown component (Dapr/Layotto) |
//! | `NotFound`                  | `NOT_FOUND`           | missing secret, missing item               |
//! | `EtagMismatch`              | `ABORTED`             | Dapr: stale ETag / first-write conflict    |
//! | `EtagInvalid`               | `INVALID_ARGUMENT`    | Dapr: malformed ETag                       |
//! | `Unavailable`               | `UNAVAILABLE`         | backend unreachable: the client may retry  |
//! | `Unimplemented`             | `UNIMPLEMENTED`       | the component lacks the feature            |
//! | `ResourceExhausted`         | `RESOURCE_EXHAUSTED`  | queue full, value too large, memory component over `maxKeys`/`maxBytes` |
//! | `FailedPrecondition`        | `FAILED_PRECONDITION` | component closed / not ready               |
//! | `Internal`                  | `INTERNAL`            | backend error we cannot blame on the caller |
//!
//! The status message is the error's text unchanged: building blocks already name the component,
//! the key and the backend address, so the adapter adds nothing (and formats nothing extra).

use mecha_capabilities::Error;
use tonic::{Code, Status};

/// The gRPC code an error kind maps to.
pub fn code_of(err: &Error) -> Code {
    match err {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::EtagMismatch(_) => Code::Aborted,
        Error::EtagInvalid(_) => Code::InvalidArgument,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Unimplemented(_) => Code::Unimplemented,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Internal(_) => Code::Internal,
    }
}

/// Converts a building-block error into the status the client sees.
pub fn to_status(err: Error) -> Status {
    let code = code_of(&err);
    // Every variant is a newtype over its message; take it instead of re-formatting.
    let message = match err {
        Error::InvalidArgument(m)
        | Error::NotFound(m)
        | Error::EtagMismatch(m)
        | Error::EtagInvalid(m)
        | Error::Unavailable(m)
        | Error::Unimplemented(m)
        | Error::ResourceExhausted(m)
        | Error::FailedPrecondition(m)
        | Error::Internal(m) => m,
    };
    Status::new(code, message)
}

/// `result.status()?` — a building-block result with its error mapped by [`to_status`].
pub trait StatusExt<T> {
    fn status(self) -> Result<T, Status>;
}

impl<T> StatusExt<T> for mecha_capabilities::Result<T> {
    #[inline]
    fn status(self) -> Result<T, Status> {
        self.map_err(to_status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_its_code_and_keeps_the_message() {
        let cases = [
            (Error::InvalidArgument("a".into()), Code::InvalidArgument),
            (Error::NotFound("b".into()), Code::NotFound),
            (Error::EtagMismatch("c".into()), Code::Aborted),
            (Error::EtagInvalid("d".into()), Code::InvalidArgument),
            (Error::Unavailable("e".into()), Code::Unavailable),
            (Error::Unimplemented("f".into()), Code::Unimplemented),
            (
                Error::ResourceExhausted("g".into()),
                Code::ResourceExhausted,
            ),
            (
                Error::FailedPrecondition("h".into()),
                Code::FailedPrecondition,
            ),
            (Error::Internal("i".into()), Code::Internal),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            assert_eq!(code_of(&err), code, "{err:?}");
            let status = to_status(err);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), text);
        }
    }

    #[test]
    fn unknown_component_is_invalid_argument_naming_it() {
        let err = Error::unknown_component("state", "nope", &["statestore"]);
        let status = Err::<(), _>(err).status().expect_err("error");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("\"nope\""),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("statestore"),
            "{}",
            status.message()
        );
    }
}
