pub mod browser;
pub mod proxy;
