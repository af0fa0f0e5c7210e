//! The checkpoint store the shared backends (NATS, Kafka) have in common: the
//! contract ([`CheckpointStore`]), the one fencing rule ([`fence`]) and the text a
//! checkpoint is stored as ([`encode_checkpoint`]). Each backend implements the
//! store on its own medium (a JetStream KV bucket with compare-and-set, a compacted
//! Kafka topic read in order); the embedded log, which one process owns, keeps its
//! own files and needs no fencing.

use async_trait::async_trait;

use super::{ChannelError, CheckpointUpdate, Epoch, Offset, NO_EPOCH};
use crate::config::BrokerId;

/// The checkpoints of one log on a shared backend: what
/// [`super::BrokerLog::load_checkpoint`], `store_checkpoint` and `init_checkpoint`
/// delegate to.
///
/// - `load`: every partition's checkpoint (`partitions` entries), `None` where none.
/// - `store`: each update is written unless the checkpoint was last written under a
///   greater epoch ([`fence`]); a stale owner's update fails with
///   [`ChannelError::Fenced`] and changes nothing.
/// - `init`: creates the missing partitions' checkpoints atomically among processes
///   (the first wins), never replacing one that exists.
#[async_trait]
pub(crate) trait CheckpointStore: Send + Sync {
    async fn load(
        &self,
        trigger: &str,
        partitions: u32,
    ) -> Result<Vec<Option<Offset>>, ChannelError>;
    async fn store(&self, trigger: &str, updates: &[CheckpointUpdate]) -> Result<(), ChannelError>;
    async fn init(&self, trigger: &str, initial: &[(u32, Offset)]) -> Result<(), ChannelError>;
}

/// The fencing rule, in one place: an update may be written over a checkpoint last
/// written (or claimed) under epoch `current` only if it carries at least that epoch.
pub(crate) fn fence(
    broker: &BrokerId,
    trigger: &str,
    update: &CheckpointUpdate,
    current: Epoch,
) -> Result<(), ChannelError> {
    if update.epoch < current {
        return Err(ChannelError::Fenced {
            broker: broker.clone(),
            trigger: trigger.to_owned(),
            partition: update.partition,
            epoch: update.epoch,
            current,
        });
    }
    Ok(())
}

/// How a shared backend stores one checkpoint as text: the offset in decimal, then
/// ` epoch=<n>` for a write under a lease (`nats kv get` and `kafka-console-consumer`
/// show it as is). A value written before epochs existed is a bare offset.
pub(crate) fn encode_checkpoint(offset: Offset, epoch: Epoch) -> String {
    if epoch == NO_EPOCH {
        offset.to_string()
    } else {
        format!("{offset} epoch={epoch}")
    }
}

/// The offset and epoch of a value written by [`encode_checkpoint`].
pub(crate) fn decode_checkpoint(text: &str) -> Option<(Offset, Epoch)> {
    let mut parts = text.split_ascii_whitespace();
    let offset = parts.next()?.parse().ok()?;
    let epoch = match parts.next() {
        None => NO_EPOCH,
        Some(e) => e.strip_prefix("epoch=")?.parse().ok()?,
    };
    parts.next().is_none().then_some((offset, epoch))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_values_carry_their_epoch() {
        assert_eq!(encode_checkpoint(42, NO_EPOCH), "42");
        assert_eq!(encode_checkpoint(42, 7), "42 epoch=7");
        assert_eq!(decode_checkpoint("42"), Some((42, NO_EPOCH)));
        assert_eq!(decode_checkpoint(" 42 \n"), Some((42, NO_EPOCH)));
        assert_eq!(decode_checkpoint("42 epoch=7"), Some((42, 7)));
        for bad in ["", "x", "42 7", "42 epoch=", "42 epoch=7 8", "-1"] {
            assert_eq!(decode_checkpoint(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_write_below_the_current_epoch_is_fenced() {
        let b = BrokerId::new("ns", "b");
        assert!(fence(&b, "t", &CheckpointUpdate::new(0, 5, 3), 3).is_ok());
        assert!(fence(&b, "t", &CheckpointUpdate::new(0, 5, 4), 3).is_ok());
        match fence(&b, "t", &CheckpointUpdate::new(2, 5, 2), 3) {
            Err(ChannelError::Fenced {
                partition: 2,
                epoch: 2,
                current: 3,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }
}
