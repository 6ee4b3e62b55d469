//! What every RabbitMQ user in bidorch shares — the posting source, the publisher and the
//! dead-letter tools: connections and confirm channels ([`connection`]), the topology
//! ([`topology`]), the headers we read and copy ([`headers`]), confirmed publishing
//! ([`confirm`]), and [`AmqpError`], the one classification of lapin's errors.

pub(crate) mod confirm;
pub(crate) mod connection;
pub(crate) mod headers;
pub mod topology;

/// A RabbitMQ failure, classified by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The broker could not be reached or dropped us: trying again later may work.
    #[error("RabbitMQ unreachable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The channel closed before an ack or confirm: that settlement did not happen.
    #[error("the RabbitMQ channel closed before the operation was confirmed")]
    ChannelClosed,
    /// The broker answered, and said no (negative confirm, unroutable message).
    #[error("RabbitMQ refused the publish: {0}")]
    Refused(String),
    /// A declare or bind was refused: the same request will be refused again.
    #[error("RabbitMQ topology: {0}")]
    Topology(String),
}
