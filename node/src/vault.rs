//! The encrypted share vault (being written).
