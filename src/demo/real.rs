//! The demo on the configured RabbitMQ, Redis and PostgreSQL (implemented with the AMQP source).

use super::{DemoError, DemoOptions, DemoReport};
use crate::config::Settings;

pub(super) async fn run(
    _settings: &Settings,
    _options: &DemoOptions,
) -> Result<DemoReport, DemoError> {
    Err(DemoError::Publish("pending".into()))
}
