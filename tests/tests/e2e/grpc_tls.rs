//! The gRPC listener with TLS and with mutual TLS (certificates made by the `openssl` CLI in a
//! temp dir: a test CA, a server leaf for 127.0.0.1 / localhost, a client leaf).

use std::path::Path;
use std::process::Command;

use rtcd_e2e::daemon::TestRtcd;
use rtcd_e2e::media::{Participant, all_permissions};
use rtcd_proto::v1::signaling_client::SignalingClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn leaf(dir: &Path, name: &str, ext: &str) -> anyhow::Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    )?;
    std::fs::write(dir.join(format!("{name}.ext")), ext)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    )
}

/// A test PKI in `dir`: `ca.pem`, `server.{pem,key}` (localhost, 127.0.0.1) and
/// `proxy.{pem,key}` (client auth).
pub(crate) fn make_pki(dir: &Path) -> anyhow::Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=rtcd-test-ca",
            "-days",
            "1",
        ],
    )?;
    leaf(
        dir,
        "server",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    leaf(
        dir,
        "proxy",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
}

async fn channel(rtcd: &TestRtcd, dir: &Path, identity: bool) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(dir.join("ca.pem"))?))
        .domain_name("localhost");
    if identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(dir.join("proxy.pem"))?,
            std::fs::read(dir.join("proxy.key"))?,
        ));
    }
    Ok(
        Channel::from_shared(format!("https://{}", rtcd.grpc_addr()))?
            .tls_config(tls)?
            .connect()
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_serves_tls_and_requires_client_certificates_when_configured() -> anyhow::Result<()> {
    let pki = tempfile::tempdir()?;
    make_pki(pki.path())?;
    let file = |n: &str| pki.path().join(n).display().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));

    // TLS: a TLS client joins; a plaintext client gets nowhere.
    let rtcd = TestRtcd::start(&[
        ("RTCD_GRPC_TLS_CERT_FILE", &cert),
        ("RTCD_GRPC_TLS_KEY_FILE", &key),
    ])
    .await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut tls = SignalingClient::new(channel(&rtcd, pki.path(), false).await?);
    Participant::join(&mut tls, Some(&auth), "call", "s1", all_permissions()).await?;
    let mut plain = rtcd.client().await?;
    assert!(
        Participant::join(&mut plain, Some(&auth), "call", "s2", all_permissions())
            .await
            .is_err()
    );
    rtcd.rtcd.shutdown().await;

    // mTLS: without a client certificate the handshake fails; with one signed by the CA it works.
    let rtcd = TestRtcd::start(&[
        ("RTCD_GRPC_TLS_CERT_FILE", &cert),
        ("RTCD_GRPC_TLS_KEY_FILE", &key),
        ("RTCD_GRPC_TLS_CLIENT_CA_FILE", &ca),
    ])
    .await?;
    let auth = rtcd.register("tenant-a").await?;
    let anonymous = match channel(&rtcd, pki.path(), false).await {
        Err(_) => true,
        Ok(ch) => Participant::join(
            &mut SignalingClient::new(ch),
            Some(&auth),
            "call",
            "s1",
            all_permissions(),
        )
        .await
        .is_err(),
    };
    assert!(anonymous, "a client without a certificate was served");
    let mut mtls = SignalingClient::new(channel(&rtcd, pki.path(), true).await?);
    Participant::join(&mut mtls, Some(&auth), "call", "s1", all_permissions()).await?;
    rtcd.rtcd.shutdown().await;
    Ok(())
}
