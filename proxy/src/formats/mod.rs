//! Client protocols. Each format parses its requests into typed artifacts, asks the store,
//! the fills and the upstream for them, and shapes the answer; none touches file paths.

pub mod oci;
