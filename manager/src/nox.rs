//! Nox-compatible /v0/delegate wire format (being written).
