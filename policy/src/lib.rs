//! sluice's dependency-firewall decision engine: artifact facts in, `allow` / `warn` /
//! `block` out, pure and without I/O on the hot path (SPEC §5).
//!
//! Not implemented yet: this crate holds the place the proxy will call at render and serve
//! time. Until it lands, every artifact is allowed and no policy key is accepted in the
//! configuration (so nobody believes a rule is enforced when it is not).
