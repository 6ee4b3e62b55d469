//! HTTP marketplace client per the spec's contract.

use async_trait::async_trait;

use super::{BidRequest, BidResult, Marketplace, MarketplaceError};

/// Marketplace client over HTTP (TO BE IMPLEMENTED by the marketplace work).
pub struct HttpMarketplace {}

#[async_trait]
impl Marketplace for HttpMarketplace {
    async fn place_bid(&self, _bid: &BidRequest) -> Result<BidResult, MarketplaceError> {
        todo!()
    }
    fn knows(&self, _marketplace: &str) -> bool {
        todo!()
    }
}
