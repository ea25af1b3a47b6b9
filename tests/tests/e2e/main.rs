mod browser;
mod proxy_auth;
