//! End-to-end harness (see issue 7).
