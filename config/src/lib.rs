//! sluice configuration: the TOML schema of SPEC §8, `${VAR}` interpolation, loading with
//! errors that point at `file:line:col`, and validation.
//!
//! The proxy never reads TOML itself: it gets a validated [`Config`] from [`load_file`],
//! [`load_str`] or [`Config::embedded_default`].

pub mod discover;
mod interpolate;
mod load;
mod policy;
mod schema;
mod units;

pub use interpolate::interpolate;
pub use load::{load_file, load_str, ConfigError};
pub use policy::{
    Ecosystem, PolicyConfig, RuleConfig, RuleKind, RuleMode, ScriptAction, Severity, WaiverConfig,
};
pub use schema::{
    AuthConfig, CleanupConfig, CleanupMode, Config, Format, FormatsConfig, Maturity, PinConfig,
    RateLimit, Role, S3Config, ServerConfig, StorageConfig, TokenConfig, UpstreamConfig,
};
pub use units::{ByteSize, Duration};
