//! The gRPC boundary both rtcd services (`signaling`, `rooms`) stand on: who the caller is
//! ([`tenant_of`]), proto <-> domain conversions ([`convert`]) and domain errors as statuses
//! ([`status`]). The services import it; it imports only the domain (SFU, lobby, auth,
//! moderation), so neither service reaches into the other and a conversion lives once.

pub mod convert;
pub mod status;

use std::net::{IpAddr, Ipv4Addr};

use tonic::{Request, Status};

use crate::auth::{AuthService, Credentials, Principal};
use crate::sfu::TenantId;

/// Who is calling: a registered client, from basic credentials or a bearer token (cached in
/// `AuthService`, so no bcrypt per RPC once verified). Admins are not tenants. Every rtcd gRPC
/// service authenticates through this one function.
pub(crate) async fn tenant_of<T>(auth: &AuthService, req: &Request<T>) -> Result<TenantId, Status> {
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::unauthenticated("authentication failed"))?;
    let credentials = Credentials::from_authorization(header).map_err(|e| status::from_auth(&e))?;
    let origin = req
        .remote_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    match auth.authenticate(&credentials, origin).await {
        Ok(Principal::Client(id)) => Ok(TenantId::new(id.as_str())),
        Ok(Principal::Admin) => Err(Status::permission_denied(
            "the admin cannot join calls; use a client's credentials",
        )),
        Err(e) => Err(status::from_auth(&e)),
    }
}
