//! In-process posting source for the embedded mode (TO BE IMPLEMENTED).

/// Deliveries from process memory.
pub struct MemoryPostingSource {}
