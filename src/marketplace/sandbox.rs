//! The sandbox marketplace server (TO BE IMPLEMENTED by the marketplace work).
