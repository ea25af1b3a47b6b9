pub mod browser;
pub mod proxy;
pub mod relay;
