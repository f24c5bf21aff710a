//! YAML behind figment's `Format` trait.
//!
//! figment's own `yaml` feature pulls in the deprecated `serde_yaml`; `serde_yaml_ng` is its
//! maintained fork with the same data model, so figment sees exactly the values it expects.

use figment::providers::Format;
use serde::de::DeserializeOwned;

/// A figment provider format that parses YAML with `serde_yaml_ng`.
pub struct Yaml;

impl Format for Yaml {
    type Error = serde_yaml_ng::Error;

    const NAME: &'static str = "YAML";

    fn from_str<T: DeserializeOwned>(string: &str) -> Result<T, Self::Error> {
        serde_yaml_ng::from_str(string)
    }
}
