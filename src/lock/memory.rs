//! In-process lease store for the embedded mode (same semantics as Redis).

use std::time::Duration;

use async_trait::async_trait;

use super::{HolderInfo, Lease, LockError, LockStore, Release};
use crate::posting::PostingKey;

/// Leases in process memory (TO BE IMPLEMENTED by the lock work).
pub struct MemoryLockStore {}

#[async_trait]
impl LockStore for MemoryLockStore {
    async fn try_acquire(
        &self,
        _key: &PostingKey,
        _ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        todo!()
    }
    async fn extend(&self, _lease: &Lease, _ttl: Duration) -> Result<bool, LockError> {
        todo!()
    }
    async fn release(&self, _lease: &Lease) -> Result<Release, LockError> {
        todo!()
    }
    async fn holder(&self, _key: &PostingKey) -> Result<Option<HolderInfo>, LockError> {
        todo!()
    }
    async fn health(&self) -> Result<(), LockError> {
        todo!()
    }
}
