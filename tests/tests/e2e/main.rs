mod proxy_auth;
