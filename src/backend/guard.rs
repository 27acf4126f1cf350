//! The in-flight slot a request holds on its backend.
//!
//! It is moved into the response body and dropped when the body ends, errors or
//! is dropped because the client went away (tower's "when does a request
//! complete?", linkerd's `PendingUntilEos`): a five-minute SSE stream counts for
//! five minutes. `Drop` makes the release happen exactly once on every path.

use std::sync::Arc;

use super::Backend;

/// One request in flight on `backend`; released on drop.
pub struct InFlight {
    backend: Arc<Backend>,
}

impl InFlight {
    pub(super) fn new(backend: Arc<Backend>) -> InFlight {
        InFlight { backend }
    }

    /// The backend this slot is on.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.release();
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("backend", &self.backend.name)
            .finish()
    }
}
