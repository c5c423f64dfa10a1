//! Hookline: a Kubernetes-native webhook gateway.
//!
//! Module map (arrows point one way, see docs/architecture.md): `api` (the custom resources)
//! ← `verify` (provider schemes), `store` (Postgres), `catalog` (resolved configuration) ←
//! `dispatch` (delivery engine), `gateway` (HTTP) ← `node` (assembles a running gateway) ←
//! `controller`, `standalone`; `telemetry` (logs, metrics) beside them all.

pub mod api;
pub mod catalog;
pub mod controller;
pub mod dispatch;
pub mod gateway;
pub mod node;
pub mod samples;
pub mod standalone;
pub mod store;
pub mod telemetry;
pub mod verify;
