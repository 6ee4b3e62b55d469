//! Named connections on the current tokio runtime, confirm-mode channels, AMQP short strings, and
//! the classification of lapin's errors into [`AmqpError`].

use lapin::options::ConfirmSelectOptions;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::ShortString;
use lapin::{Connection, ConnectionProperties, ErrorKind};

use super::AmqpError;
use crate::config::AmqpSettings;

/// Opens a connection the broker lists under `name` (`rabbitmqctl list_connections`).
pub(crate) async fn open_connection(
    settings: &AmqpSettings,
    name: &str,
) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(settings.url.expose(), props)
        .await
        .map_err(classify)
}

/// Opens a channel in publisher-confirm mode.
pub(crate) async fn confirm_channel(connection: &Connection) -> Result<lapin::Channel, AmqpError> {
    let channel = connection.create_channel().await.map_err(classify)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(classify)?;
    Ok(channel)
}

/// An AMQP short string (names, header keys), refusing rather than panicking past 255 bytes.
pub(crate) fn short(s: &str) -> Result<ShortString, AmqpError> {
    ShortString::try_new(s).map_err(|_| {
        AmqpError::Topology(format!(
            "name {:?}… is longer than AMQP's 255-byte limit",
            s.chars().take(40).collect::<String>()
        ))
    })
}

/// Classifies a lapin error: refusals of a declare or bind are topology problems, a closed
/// channel means the operation did not happen, anything else is the broker being unreachable.
pub(crate) fn classify(err: lapin::Error) -> AmqpError {
    match err.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(
                AMQPSoftError::PRECONDITIONFAILED
                | AMQPSoftError::NOTFOUND
                | AMQPSoftError::ACCESSREFUSED
                | AMQPSoftError::RESOURCELOCKED,
            ) => AmqpError::Topology(amqp.to_string()),
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => AmqpError::Topology(amqp.to_string()),
            _ => AmqpError::Unavailable(Box::new(err)),
        },
        ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidChannel(_) => {
            AmqpError::ChannelClosed
        }
        _ => AmqpError::Unavailable(Box::new(err)),
    }
}
