//! The neutral data model between families and exporters: metrics, histograms, resources and
//! spans. It names no family and no exporter.

pub mod histogram;
pub mod layout;
pub mod metrics;
pub mod names;
pub mod resource;
pub mod span;
