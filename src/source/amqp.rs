//! RabbitMQ posting source (TO BE IMPLEMENTED by the queue work).

/// Deliveries from RabbitMQ.
pub struct AmqpPostingSource {}
impl AmqpPostingSource {
    /// Placeholder until the RabbitMQ source lands.
    pub async fn connect(
        _settings: &crate::config::AmqpSettings,
        _tag: &str,
    ) -> Result<Self, super::SourceError> {
        Err(super::SourceError::Topology("pending".into()))
    }
}
#[async_trait::async_trait]
impl super::PostingSource for AmqpPostingSource {
    async fn next(&mut self) -> Option<Result<super::Delivery, super::SourceError>> {
        None
    }
    async fn stop(&mut self) -> Result<(), super::SourceError> {
        Ok(())
    }
}
