//! RabbitMQ posting source (TO BE IMPLEMENTED by the queue work).

/// Deliveries from RabbitMQ.
pub struct AmqpPostingSource {}
