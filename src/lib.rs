//! Hookline: a Kubernetes-native webhook gateway.
//!
//! Module map: `api` (the custom resources), `store` (Postgres), `telemetry` (logs, metrics).

pub mod api;
pub mod controller;
pub mod dispatch;
pub mod gateway;
pub mod standalone;
pub mod store;
pub mod telemetry;
pub mod verify;
