//! Authentication, authorization and TLS end to end: the role table exercised on every RPC of
//! every service, revoked and expired tokens, organizations that cannot see each other, and
//! TLS with and without client certificates. SQLite by default, PostgreSQL with
//! `EBB_TEST_DATABASE_URL`.

use std::time::Duration;

use ebb_common::auth::{ROLE_TABLE, Role};
use ebb_common::methods::is_self_authorized;
use ebb_tests::cluster::{Cluster, eventually, fixture};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;
use ebb_tests::proto::lifecycle::v1::runner_service_client::RunnerServiceClient;
use ebb_tests::proto::lifecycle::v1::token_service_client::TokenServiceClient;
use ebb_tests::{ADMIN_TOKEN, Channel, Process, SERVICE_TOKEN, TestDatabases};
use tonic::Code;

pub(crate) async fn create_token(
    tokens: &mut TokenServiceClient<Channel>,
    org: &str,
    role: pb::TokenRole,
    expire_time: Option<prost_types::Timestamp>,
) -> (pb::Token, String) {
    let r = tokens
        .create_token(pb::CreateTokenRequest {
            organization_id: org.to_owned(),
            role: role as i32,
            description: format!("{role:?} of {org}"),
            expire_time,
            ..Default::default()
        })
        .await
        .expect("create token")
        .into_inner();
    (r.token.expect("token"), r.secret)
}

/// Calls `path` with an empty message, as any generated client would.
async fn call_empty(channel: Channel, path: &str, streaming: bool) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path: http::uri::PathAndQuery = path.parse().expect("path");
    if streaming {
        grpc.server_streaming(tonic::Request::new(()), path, codec)
            .await
            .map(|_| ())
    } else {
        grpc.unary(tonic::Request::new(()), path, codec)
            .await
            .map(|_| ())
    }
}

/// Lifecycle, one scheduler, notifier and audit, the last three checking tokens with
/// lifecycle.
struct Services {
    cluster: Cluster,
    notifier: Process,
    audit: Process,
}

async fn start_services() -> Services {
    let mut cluster = Cluster::start(1).await;
    let url = cluster.lifecycle.url();
    let notifier_db = cluster.dbs.create("notifier").await;
    let audit_db = cluster.dbs.create("audit").await;
    let notifier = Process::spawn(
        "notifier-svc",
        &[],
        &[
            ("EBB_DATABASE_URL", notifier_db),
            ("EBB_AUTH__LIFECYCLE_URL", url.clone()),
        ],
        cluster.dbs.dir(),
    )
    .await
    .expect("notifier");
    let audit = Process::spawn(
        "audit-svc",
        &[],
        &[
            ("EBB_DATABASE_URL", audit_db),
            ("EBB_AUTH__LIFECYCLE_URL", url),
        ],
        cluster.dbs.dir(),
    )
    .await
    .expect("audit");
    notifier.wait_serving("").await.expect("notifier serving");
    audit.wait_serving("").await.expect("audit serving");
    Services {
        cluster,
        notifier,
        audit,
    }
}

impl Services {
    fn process_of(&self, path: &str) -> &Process {
        if path.starts_with("/ebb.lifecycle.") {
            &self.cluster.lifecycle
        } else if path.starts_with("/ebb.scheduler.") {
            &self.cluster.schedulers[0]
        } else if path.starts_with("/ebb.notifier.") {
            &self.notifier
        } else {
            &self.audit
        }
    }
}

#[tokio::test]
async fn every_rpc_of_every_service_follows_the_role_table() {
    let services = start_services().await;
    let mut api = services.cluster.api().await;
    let f = fixture(&mut api, None, "ws").await;
    let mut tokens = TokenServiceClient::new(services.cluster.lifecycle.channel().await);
    let mut callers: Vec<(Role, bool, String)> = vec![
        (Role::Admin, true, ADMIN_TOKEN.to_owned()),
        (Role::Service, true, SERVICE_TOKEN.to_owned()),
    ];
    for (role, proto_role) in [
        (Role::Admin, pb::TokenRole::Admin),
        (Role::Operator, pb::TokenRole::Operator),
        (Role::Runner, pb::TokenRole::Runner),
        (Role::Reader, pb::TokenRole::Reader),
    ] {
        let (_, secret) = create_token(&mut tokens, &f.org.id, proto_role, None).await;
        callers.push((role, false, secret));
    }
    let mut checked = 0;
    for (path, access) in ROLE_TABLE {
        let process = services.process_of(path);
        let streaming = path.ends_with("/ExportEvents");
        for (role, system, secret) in &callers {
            let allowed = access.roles.contains(role) && (*system || !access.system_only);
            let result = call_empty(process.channel_as(secret).await, path, streaming).await;
            let code = result.as_ref().err().map(|s| s.code());
            if allowed {
                assert!(
                    !matches!(
                        code,
                        Some(
                            Code::PermissionDenied
                                | Code::Unauthenticated
                                | Code::Internal
                                | Code::Unknown
                                | Code::Unimplemented
                        )
                    ),
                    "{path} as {role:?} (system: {system}) must be let through: {result:?}"
                );
            } else {
                assert_eq!(
                    code,
                    Some(Code::PermissionDenied),
                    "{path} as {role:?} (system: {system}): {result:?}"
                );
            }
            checked += 1;
        }
        let anonymous = call_empty(process.channel_as("").await, path, streaming).await;
        // A self-authorized call goes to its handler, which refuses the empty request.
        let expected = if is_self_authorized(path) {
            Code::InvalidArgument
        } else {
            Code::Unauthenticated
        };
        assert_eq!(
            anonymous.err().map(|s| s.code()),
            Some(expected),
            "{path} without a token"
        );
    }
    assert!(checked > 300, "checked {checked} calls");
    // Health stays open.
    services
        .notifier
        .wait_serving("")
        .await
        .expect("health without a token");
}

#[tokio::test]
async fn revoked_and_expired_tokens_stop_working_everywhere() {
    let services = start_services().await;
    let mut api = services.cluster.api().await;
    let f = fixture(&mut api, None, "ws").await;
    let mut tokens = TokenServiceClient::new(services.cluster.lifecycle.channel().await);
    let (reader, secret) = create_token(&mut tokens, &f.org.id, pb::TokenRole::Reader, None).await;
    let get = |channel: Channel| {
        let ws = f.workspace.id.clone();
        async move {
            LifecycleServiceClient::new(channel)
                .get_workspace(pb::GetWorkspaceRequest { workspace_id: ws })
                .await
        }
    };
    get(services.cluster.lifecycle.channel_as(&secret).await)
        .await
        .expect("reader reads");
    let mut audit = ebb_tests::proto::audit::v1::audit_service_client::AuditServiceClient::new(
        services.audit.channel_as(&secret).await,
    );
    audit
        .list_events(ebb_tests::proto::audit::v1::ListEventsRequest::default())
        .await
        .expect("reader reads audit through lifecycle's token check");

    let listed = tokens
        .list_tokens(pb::ListTokensRequest {
            organization_id: f.org.id.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.tokens.iter().any(|t| t.id == reader.id));

    tokens
        .revoke_token(pb::RevokeTokenRequest {
            token_id: reader.id.clone(),
            ..Default::default()
        })
        .await
        .expect("revoke");
    let err = get(services.cluster.lifecycle.channel_as(&secret).await)
        .await
        .expect_err("revoked on lifecycle at once");
    assert_eq!(err.code(), Code::Unauthenticated);
    // Other services trust lifecycle's answer for at most 2 seconds.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = audit
        .list_events(ebb_tests::proto::audit::v1::ListEventsRequest::default())
        .await
        .expect_err("revoked on audit");
    assert_eq!(err.code(), Code::Unauthenticated);

    let (_, short) = create_token(
        &mut tokens,
        &f.org.id,
        pb::TokenRole::Reader,
        Some(ebb_tests::cluster::from_now(Duration::from_millis(1500))),
    )
    .await;
    get(services.cluster.lifecycle.channel_as(&short).await)
        .await
        .expect("works before it expires");
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let err = get(services.cluster.lifecycle.channel_as(&short).await)
        .await
        .expect_err("expired");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Expiry in the past or unspecified roles are the client's mistake.
    let err = tokens
        .create_token(pb::CreateTokenRequest {
            organization_id: f.org.id.clone(),
            role: pb::TokenRole::Reader as i32,
            expire_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect_err("past expiry");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = tokens
        .create_token(pb::CreateTokenRequest {
            organization_id: f.org.id.clone(),
            role: 42,
            ..Default::default()
        })
        .await
        .expect_err("unknown role");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn organizations_cannot_see_each_other_and_refusals_change_nothing() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let a = fixture(&mut api, None, "ws-a").await;
    let b = fixture(&mut api, None, "ws-b").await;
    let mut tokens = TokenServiceClient::new(cluster.lifecycle.channel().await);
    let (_, b_admin) = create_token(&mut tokens, &b.org.id, pb::TokenRole::Admin, None).await;
    let (_, a_reader) = create_token(&mut tokens, &a.org.id, pb::TokenRole::Reader, None).await;
    let (_, a_runner) = create_token(&mut tokens, &a.org.id, pb::TokenRole::Runner, None).await;
    let mut as_b = LifecycleServiceClient::new(cluster.lifecycle.channel_as(&b_admin).await);

    let count = |api: LifecycleServiceClient<Channel>, org: String| async move {
        let mut api = api;
        ebb_tests::cluster::events(&mut api, &org, "")
            .await
            .into_iter()
            .filter(|e| e.r#type != "auth.denied")
            .count()
    };
    let before_a = count(cluster.api().await, a.org.id.clone()).await;

    // A's workspace, project and organization do not exist for B: the same answer as for an
    // id that exists nowhere.
    let missing = uuid::Uuid::new_v4().to_string();
    for id in [&a.workspace.id, &missing] {
        let err = as_b
            .get_workspace(pb::GetWorkspaceRequest {
                workspace_id: id.clone(),
            })
            .await
            .expect_err("not visible");
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), format!("workspace {id} not found"));
        let err = as_b
            .lock_workspace(pb::LockWorkspaceRequest {
                workspace_id: id.clone(),
                reason: "mine now".into(),
                ..Default::default()
            })
            .await
            .expect_err("not changeable");
        assert_eq!(err.code(), Code::NotFound);
    }
    let err = as_b
        .list_workspaces(pb::ListWorkspacesRequest {
            organization_id: a.org.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("other org");
    assert_eq!(err.code(), Code::NotFound);
    let err = as_b
        .create_run(pb::CreateRunRequest {
            workspace_id: a.workspace.id.clone(),
            is_destroy: true,
            ..Default::default()
        })
        .await
        .expect_err("no destroy of another's workspace");
    assert_eq!(err.code(), Code::NotFound);
    // Without an organization, B sees its own things only.
    let own = as_b
        .list_workspaces(pb::ListWorkspacesRequest::default())
        .await
        .expect("own list")
        .into_inner();
    assert_eq!(
        own.workspaces.iter().map(|w| &w.id).collect::<Vec<_>>(),
        [&b.workspace.id]
    );
    let outbox = as_b
        .list_outbox_events(pb::ListOutboxEventsRequest::default())
        .await
        .expect("own events")
        .into_inner();
    assert!(outbox.events.iter().all(|e| e.organization_id == b.org.id));

    // A reader never mutates; a runner only runs, and only its organization's runs.
    let mut reader = LifecycleServiceClient::new(cluster.lifecycle.channel_as(&a_reader).await);
    let err = reader
        .lock_workspace(pb::LockWorkspaceRequest {
            workspace_id: a.workspace.id.clone(),
            reason: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("reader");
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut runner = RunnerServiceClient::new(cluster.lifecycle.channel_as(&a_runner).await);
    runner
        .claim_run(pb::ClaimRunRequest {
            runner_id: "r1".into(),
            ..Default::default()
        })
        .await
        .expect("claims in its organization");
    let err = runner
        .claim_run(pb::ClaimRunRequest {
            organization_id: b.org.id.clone(),
            runner_id: "r1".into(),
            ..Default::default()
        })
        .await
        .expect_err("other org's runs");
    assert_eq!(err.code(), Code::NotFound);
    let err = LifecycleServiceClient::new(cluster.lifecycle.channel_as(&a_runner).await)
        .get_workspace(pb::GetWorkspaceRequest {
            workspace_id: a.workspace.id.clone(),
        })
        .await
        .expect_err("runner reads nothing else");
    assert_eq!(err.code(), Code::PermissionDenied);
    // An organization's admin cannot create organizations or service tokens.
    let err = as_b
        .create_organization(pb::CreateOrganizationRequest {
            name: "mine".into(),
            ..Default::default()
        })
        .await
        .expect_err("system only");
    assert_eq!(err.code(), Code::PermissionDenied);

    assert_eq!(count(cluster.api().await, a.org.id.clone()).await, before_a);
    // Refusals of A's tokens are in A's outbox (the reader's and the runner's); the runner's
    // call about B's organization is not: it is answered as if B did not exist.
    let admin = cluster.api().await;
    eventually(Duration::from_secs(10), "auth.denied events", || {
        let mut admin = admin.clone();
        let org = a.org.id.clone();
        async move {
            let denied = ebb_tests::cluster::events(&mut admin, &org, "auth.denied").await;
            (denied.len() >= 2).then_some(())
        }
    })
    .await;
    eventually(Duration::from_secs(10), "B's auth.denied events", || {
        let mut admin = admin.clone();
        let org = b.org.id.clone();
        async move {
            let denied = ebb_tests::cluster::events(&mut admin, &org, "auth.denied").await;
            (!denied.is_empty()).then_some(())
        }
    })
    .await;
}

mod tls {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType, SerialNumber,
    };
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

    struct Pki {
        ca: String,
        files: Vec<(&'static str, std::path::PathBuf)>,
        client_cert: String,
        client_key: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn pki(dir: &std::path::Path) -> Pki {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        server_params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server cert");
        let client_key = KeyPair::generate().expect("client key");
        let client_cert = CertificateParams::new(vec!["client".to_owned()])
            .expect("client params")
            .signed_by(&client_key, &issuer)
            .expect("client cert");
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write pem");
            path
        };
        Pki {
            ca: ca_cert.pem(),
            files: vec![
                ("EBB_TLS__CERT_PATH", write("server.pem", server_cert.pem())),
                (
                    "EBB_TLS__KEY_PATH",
                    write("server.key", server_key.serialize_pem()),
                ),
                ("EBB_TLS__CLIENT_CA_PATH", write("ca.pem", ca_cert.pem())),
            ],
            client_cert: client_cert.pem(),
            client_key: client_key.serialize_pem(),
            issuer,
        }
    }

    async fn health(
        url: &str,
        tls: Option<ClientTlsConfig>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint.connect().await?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await?;
        Ok(())
    }

    #[tokio::test]
    async fn tls_serves_clients_with_certificates_and_refuses_those_without() {
        let mut dbs = TestDatabases::new();
        let url = dbs.create("audit").await;
        let pki = pki(dbs.dir());
        let mut env: Vec<(&str, String)> = pki
            .files
            .iter()
            .map(|(k, p)| (*k, p.display().to_string()))
            .collect();
        env.push(("EBB_DATABASE_URL", url));
        let p = Process::spawn("audit-svc", &[], &env, dbs.dir())
            .await
            .expect("audit-svc with TLS");
        let https = format!("https://{}", p.addr);
        let with_cert = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca))
            .identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
        eventually(Duration::from_secs(30), "TLS health", || {
            let (https, tls) = (https.clone(), with_cert.clone());
            async move { health(&https, Some(tls)).await.ok() }
        })
        .await;

        // An authenticated call over mTLS.
        let channel = Endpoint::from_shared(https.clone())
            .expect("url")
            .tls_config(with_cert.clone())
            .expect("tls")
            .connect()
            .await
            .expect("connect");
        let mut audit = ebb_tests::proto::audit::v1::audit_service_client::AuditServiceClient::new(
            tonic::service::interceptor::InterceptedService::new(
                channel,
                ebb_tests::Bearer::new(ADMIN_TOKEN),
            ),
        );
        audit
            .list_events(ebb_tests::proto::audit::v1::ListEventsRequest {
                organization_id: "org-1".into(),
                ..Default::default()
            })
            .await
            .expect("call over mTLS");

        // Without a client certificate the handshake is refused.
        let no_cert = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca));
        assert!(health(&https, Some(no_cert)).await.is_err());
        // Plaintext gets nothing either.
        assert!(health(&p.url(), None).await.is_err());
        p.kill().await;
    }

    /// A server certificate for `localhost` and 127.0.0.1 named `cn` with `serial`, signed by
    /// `issuer`: (certificate PEM, key PEM, certificate DER).
    fn server_cert(
        issuer: &Issuer<'static, KeyPair>,
        cn: &str,
        serial: u64,
    ) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, issuer).expect("server cert");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// The certificate a new TLS connection to `addr` is shown (DER), trusting `ca` and
    /// presenting the client certificate.
    async fn served_certificate(addr: std::net::SocketAddr, pki: &Pki) -> Option<Vec<u8>> {
        use tokio_rustls::rustls::pki_types::pem::PemObject as _;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca.as_bytes()).expect("ca pem"))
            .expect("ca");
        let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(pki.client_cert.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(pki.client_key.as_bytes()).expect("key"),
            )
            .expect("client auth");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let socket = tokio::net::TcpStream::connect(addr).await.ok()?;
        let tls = connector
            .connect(ServerName::try_from("localhost").expect("name"), socket)
            .await
            .ok()?;
        let (_, session) = tls.get_ref();
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
        Some(session.peer_certificates()?.first()?.to_vec())
    }

    /// Replacing the certificate and key files under a running server: within seconds new
    /// connections see the new certificate, without a restart; a file that does not load
    /// keeps the previous certificate and is logged.
    #[tokio::test]
    async fn certificates_reload_when_their_files_change() {
        let mut dbs = TestDatabases::new();
        let url = dbs.create("audit").await;
        let pki = pki(dbs.dir());
        let mut env: Vec<(&str, String)> = pki
            .files
            .iter()
            .map(|(k, p)| (*k, p.display().to_string()))
            .collect();
        env.push(("EBB_DATABASE_URL", url));
        let p = Process::spawn("audit-svc", &[], &env, dbs.dir())
            .await
            .expect("audit-svc with TLS");
        let pid = p.pid();
        let (cert_path, key_path) = (dbs.dir().join("server.pem"), dbs.dir().join("server.key"));
        let (pem1, key1, der1) = server_cert(&pki.issuer, "ebb-cert-one", 1001);
        std::fs::write(&cert_path, &pem1).expect("write cert");
        std::fs::write(&key_path, &key1).expect("write key");
        // The certificate written before start (by `pki`) or cert 1, whichever was read: wait
        // for cert 1, the first rotation.
        eventually(Duration::from_secs(10), "certificate one", || {
            let (pki, der1) = (&pki, &der1);
            async move { (served_certificate(p.addr, pki).await.as_ref() == Some(der1)).then_some(()) }
        })
        .await;

        // A broken certificate file keeps certificate one.
        std::fs::write(&cert_path, "not a certificate").expect("write junk");
        eventually(Duration::from_secs(10), "the load error logged", || {
            let log = p.log_text();
            async move {
                log.contains("keeping the previous certificate")
                    .then_some(())
            }
        })
        .await;
        assert_eq!(served_certificate(p.addr, &pki).await, Some(der1));

        // Certificate two, another name and serial from the same CA.
        let (pem2, key2, der2) = server_cert(&pki.issuer, "ebb-cert-two", 2002);
        let started = std::time::Instant::now();
        std::fs::write(&key_path, &key2).expect("write key");
        std::fs::write(&cert_path, &pem2).expect("write cert");
        eventually(Duration::from_secs(10), "certificate two", || {
            let (pki, der2) = (&pki, &der2);
            async move { (served_certificate(p.addr, pki).await.as_ref() == Some(der2)).then_some(()) }
        })
        .await;
        println!("new certificate served after {:?}", started.elapsed());
        assert_eq!(p.pid(), pid, "the server was not restarted");
        assert!(p.log_text().contains("TLS certificate reloaded"));
        p.kill().await;
    }
}

#[tokio::test]
async fn organizations_are_listed_to_those_who_may_see_them() {
    let cluster = Cluster::start(0).await;
    let mut api = cluster.api().await;
    let mut ids = Vec::new();
    for name in ["list-a", "list-b", "list-c"] {
        let org = api
            .create_organization(pb::CreateOrganizationRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("org")
            .into_inner()
            .organization
            .expect("org");
        ids.push(org.id);
    }
    let list = |api: &mut LifecycleServiceClient<Channel>, name: &str, size: i32, token: &str| {
        let mut api = api.clone();
        let req = pb::ListOrganizationsRequest {
            name: name.into(),
            page_size: size,
            page_token: token.into(),
        };
        async move { api.list_organizations(req).await.map(|r| r.into_inner()) }
    };
    // The bootstrap admin sees every organization, oldest first, page by page.
    let first = list(&mut api, "", 2, "").await.expect("page 1");
    let second = list(&mut api, "", 2, &first.next_page_token)
        .await
        .expect("page 2");
    assert!(second.next_page_token.is_empty());
    let seen: Vec<String> = first
        .organizations
        .iter()
        .chain(&second.organizations)
        .map(|o| o.id.clone())
        .collect();
    assert_eq!(seen, ids);
    let named = list(&mut api, "list-b", 0, "").await.expect("by name");
    assert_eq!(named.organizations.len(), 1);
    assert_eq!(named.organizations[0].id, ids[1]);
    // A page token of another filter is refused, naming the field.
    let err = list(&mut api, "list-b", 0, &first.next_page_token)
        .await
        .expect_err("token of another filter");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("page_token"), "{err:?}");

    // An organization's reader sees its own organization only.
    let mut tokens = TokenServiceClient::new(cluster.lifecycle.channel().await);
    let (_, secret) = create_token(&mut tokens, &ids[2], pb::TokenRole::Reader, None).await;
    let mut reader = LifecycleServiceClient::new(cluster.lifecycle.channel_as(&secret).await);
    let own = list(&mut reader, "", 0, "").await.expect("reader's list");
    let own: Vec<&str> = own.organizations.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(own, [ids[2].as_str()]);
    let other = list(&mut reader, "list-a", 0, "").await.expect("by name");
    assert!(other.organizations.is_empty(), "{other:?}");
}

/// lifecycle trusts a token it checked for `auth.cache_ttl` (1 s by default): a revocation
/// holds at once on the replica that revokes, and once that time has passed on every other
/// replica, even one that trusted the token a moment before.
#[tokio::test]
async fn a_revocation_reaches_every_lifecycle_replica_within_the_cache_ttl() {
    let mut dbs = TestDatabases::new();
    let db = dbs.create("lifecycle").await;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let p = Process::spawn("lifecycle-svc", &["--database-url", &db], &[], dbs.dir())
            .await
            .expect("start lifecycle-svc");
        p.wait_serving("").await.expect("lifecycle-svc serving");
        replicas.push(p);
    }
    let (first, second) = (&replicas[0], &replicas[1]);
    let mut api = LifecycleServiceClient::new(first.channel().await);
    let f = fixture(&mut api, None, "ws").await;
    let mut tokens = TokenServiceClient::new(first.channel().await);
    let (reader, secret) = create_token(&mut tokens, &f.org.id, pb::TokenRole::Reader, None).await;
    let ws = f.workspace.id.clone();
    let get = async |replica: &Process| {
        LifecycleServiceClient::new(replica.channel_as(&secret).await)
            .get_workspace(pb::GetWorkspaceRequest {
                workspace_id: ws.clone(),
            })
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    };
    // Both replicas read with it: the second now trusts it.
    get(second).await.expect("the second replica reads");
    get(first).await.expect("the first replica reads");

    tokens
        .revoke_token(pb::RevokeTokenRequest {
            token_id: reader.id.clone(),
            ..Default::default()
        })
        .await
        .expect("revoke");
    assert_eq!(
        get(first).await,
        Err(Code::Unauthenticated),
        "at once where revoked"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(second).await,
        Err(Code::Unauthenticated),
        "on the other replica once the cache time passed"
    );
}
