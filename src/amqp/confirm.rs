//! Confirmed publishing: a `mandatory` publish on a confirm channel counts as done only when the
//! broker acked it AND did not return it (a confirm alone also arrives for a message no queue took).

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};

use super::AmqpError;
use super::connection::{classify, short};

/// Publishes `body` to `exchange` with `routing_key` (`mandatory`) and waits for its confirm.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), AmqpError> {
    let confirm = channel
        .basic_publish(
            short(exchange)?,
            short(routing_key)?,
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await
        .map_err(classify)?
        .await
        .map_err(classify)?;
    check_confirmation(confirm, routing_key)
}

/// Turns a confirmation into success only if the broker acked AND did not return the message.
pub(crate) fn check_confirmation(confirm: Confirmation, target: &str) -> Result<(), AmqpError> {
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(AmqpError::Refused(format!(
                "message to {target} was returned unroutable ({} {})",
                returned.reply_code, returned.reply_text
            )))
        }
        Confirmation::Nack(None) => Err(AmqpError::Refused(format!(
            "the broker did not accept the message to {target} (negative confirm)"
        ))),
        Confirmation::NotRequested => Err(AmqpError::Refused(
            "publisher confirms are not enabled on this channel".to_owned(),
        )),
    }
}
