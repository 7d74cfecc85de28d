//! Request ids on refusals: the id a caller (or Envoy) sent as
//! `x-request-id`, else a fresh one, is logged with the refusal and sent
//! back in the status's `x-request-id` metadata, so the line in quotad's
//! log can be found from the caller's error.

use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::core::hash::hex16;

/// The metadata key, in requests and in refusals.
pub const HEADER: &str = "x-request-id";

/// Longest id taken from a caller; a longer (or non-printable) one is
/// replaced, so a caller cannot put what it likes into the log.
const MAX_LEN: usize = 128;

/// The caller's id when it is short printable ASCII, else a new random
/// one (16 hex digits).
pub fn of(meta: &MetadataMap) -> String {
    meta.get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| hex16(rand::random()), str::to_owned)
}

/// `status` with the request id in its metadata.
pub fn tag(mut status: Status, id: &str) -> Status {
    if let Ok(v) = MetadataValue::try_from(id) {
        status.metadata_mut().insert(HEADER, v);
    }
    status
}

/// Logs a refused call (debug: a flood of bad requests must not flood
/// the log) and returns its status tagged with the request id.
pub fn refuse(meta: &MetadataMap, api: &'static str, status: Status) -> Status {
    let id = of(meta);
    tracing::debug!(request_id = %id, api, code = ?status.code(), error = status.message(), "call refused");
    tag(status, &id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_printable_id_and_replaces_anything_else() {
        let mut m = MetadataMap::new();
        assert_eq!(of(&m).len(), 16);
        m.insert(HEADER, MetadataValue::from_static("abc-123"));
        assert_eq!(of(&m), "abc-123");
        m.insert(HEADER, MetadataValue::try_from("x".repeat(200)).unwrap());
        assert_eq!(of(&m).len(), 16);
        let s = tag(Status::invalid_argument("no"), "abc-123");
        assert_eq!(s.metadata().get(HEADER).unwrap(), "abc-123");
    }
}
