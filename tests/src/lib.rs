//! Test beds for lb.
