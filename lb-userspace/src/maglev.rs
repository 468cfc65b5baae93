//! Maglev consistent hashing.
