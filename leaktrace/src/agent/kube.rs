//! The pods of this node, from the Kubernetes API: a list, then a watch
//! (`fieldSelector=spec.nodeName=NODE`), on a thread of its own, into the
//! [`PodIndex`] discovery reads. Read-only; the agent runs without it.
use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    thread,
    time::Duration,
};

use base64::Engine;
use log::{debug, info, warn};
use serde::Deserialize;
use ureq::{
    Agent,
    tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig},
};

use super::{
    config::Kubernetes,
    containers::{self, PodIndex, PodIndexConfig, PodList, WatchError},
};

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// A pod list of a node is small; more is a mistake or an attack.
const MAX_LIST_BYTES: u64 = 64 << 20;
/// Wait between failed attempts, doubling up to the cap.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(60);

/// How to reach the API server.
pub struct Client {
    agent: Agent,
    server: String,
    token: Option<String>,
}

/// What the pods say, shared with discovery.
pub type Pods = Arc<RwLock<PodIndex>>;

impl Client {
    pub fn new(source: &Kubernetes) -> Result<Client, String> {
        match source {
            Kubernetes::None => Err("no Kubernetes configured".into()),
            Kubernetes::InCluster => in_cluster(),
            Kubernetes::Kubeconfig(path) => {
                from_kubeconfig(path).map_err(|e| format!("--kubeconfig {}: {e}", path.display()))
            }
        }
    }

    /// Lists, then watches, until the process ends; errors are logged and retried.
    pub fn start(self, node: String) -> Pods {
        let pods: Pods = Arc::new(RwLock::new(PodIndex::new(PodIndexConfig {
            node_name: Some(node.clone()),
            ..PodIndexConfig::default()
        })));
        let index = pods.clone();
        let spawned = thread::Builder::new()
            .name("leaktrace-kube".into())
            .spawn(move || self.follow(&node, &index));
        if let Err(e) = spawned {
            warn!("the Kubernetes watch did not start ({e}): process rules only");
        }
        pods
    }

    fn follow(&self, node: &str, pods: &Pods) {
        let mut wait = RETRY_FIRST;
        loop {
            match self.list_and_watch(node, pods) {
                Ok(()) => wait = RETRY_FIRST,
                Err(e) => {
                    warn!("Kubernetes pods of node {node}: {e}; again in {wait:?}");
                    thread::sleep(wait);
                    wait = (wait * 2).min(RETRY_CAP);
                }
            }
        }
    }

    /// One list, then watches from its version until one fails.
    fn list_and_watch(&self, node: &str, pods: &Pods) -> Result<(), String> {
        let body = self.get(&containers::list_path(node))?;
        let mut text = String::new();
        body.take(MAX_LIST_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| format!("reading the pod list: {e}"))?;
        let list: PodList =
            serde_json::from_str(&text).map_err(|e| format!("the pod list: {e}"))?;
        let mut version = write(pods).apply_list(&list);
        info!("Kubernetes: {} pods on node {node}", list.items.len());
        loop {
            let body = self.get(&containers::watch_path(node, version.as_deref()))?;
            let mut lines = BufReader::new(body);
            let mut line = String::new();
            loop {
                line.clear();
                // Bounded: a line longer than the watch limit is refused by parse.
                let read = (&mut lines)
                    .take(containers::MAX_WATCH_LINE_BYTES as u64 + 1)
                    .read_line(&mut line);
                match read {
                    Ok(0) => break, // the server ended the watch: watch again
                    Ok(_) => {}
                    Err(e) => return Err(format!("the pod watch: {e}")),
                }
                if line.trim().is_empty() {
                    continue;
                }
                let event = match containers::parse_watch_line(&line) {
                    Ok(event) => event,
                    Err(WatchError::LineTooLong { .. }) => {
                        return Err("a watch event too large: listing again".into());
                    }
                    Err(e) => return Err(format!("the pod watch: {e}")),
                };
                let mut index = write(pods);
                match index.apply_event(&event) {
                    Ok(()) => {}
                    // 410 Gone: the version is too old; list again.
                    Err(e) => return Err(format!("the pod watch: {e}")),
                }
                version = index.resource_version().map(str::to_string);
            }
            debug!("Kubernetes watch ended; watching again from {version:?}");
        }
    }

    fn get(&self, path: &str) -> Result<impl Read + use<>, String> {
        let url = format!("{}{path}", self.server);
        let mut request = self.agent.get(&url).header("Accept", "application/json");
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let response = request.call().map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(format!(
                "GET {url}: HTTP {status} (the agent needs get, list and watch on pods: deploy/rbac.yaml)"
            ));
        }
        Ok(response.into_body().into_reader())
    }
}

fn write(pods: &Pods) -> std::sync::RwLockWriteGuard<'_, PodIndex> {
    pods.write().unwrap_or_else(|e| e.into_inner())
}

/// The service account's token and CA, in a pod.
fn in_cluster() -> Result<Client, String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .map_err(|_| "KUBERNETES_SERVICE_HOST is not set")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let dir = Path::new(SERVICE_ACCOUNT);
    let token = read_small(&dir.join("token"))?;
    let ca =
        std::fs::read(dir.join("ca.crt")).map_err(|e| format!("{SERVICE_ACCOUNT}/ca.crt: {e}"))?;
    Ok(Client {
        agent: agent(Some(&ca), None)?,
        server: format!("https://{host}:{port}"),
        token: Some(token.trim().to_string()),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    current_context: Option<String>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: T,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
}

/// A kubeconfig's current context: its server, CA, and token or client
/// certificate. (Exec plugins and auth providers are not run.)
fn from_kubeconfig(path: &Path) -> Result<Client, String> {
    let text = read_small(path)?;
    let config: Kubeconfig =
        serde_norway::from_str(&text).map_err(|e| e.to_string().replace('\n', " "))?;
    let current = config.current_context.ok_or("no current-context")?;
    let context = &config
        .contexts
        .iter()
        .find(|c| c.name == current)
        .ok_or_else(|| format!("context {current} is not defined"))?
        .value;
    let cluster = &config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .ok_or_else(|| format!("cluster {} is not defined", context.cluster))?
        .value;
    let no_user = User::default();
    let user = match &context.user {
        Some(name) => {
            &config
                .users
                .iter()
                .find(|u| &u.name == name)
                .ok_or_else(|| format!("user {name} is not defined"))?
                .value
        }
        None => &no_user,
    };
    let ca = pem(
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    )?;
    let cert = pem(&user.client_certificate_data, &user.client_certificate)?;
    let key = pem(&user.client_key_data, &user.client_key)?;
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        _ => None,
    };
    let token = match (&user.token, &user.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(file)) => Some(read_small(file)?.trim().to_string()),
        _ => None,
    };
    Ok(Client {
        agent: agent(ca.as_deref(), client.as_ref())?,
        server: cluster.server.trim_end_matches('/').to_string(),
        token,
    })
}

/// Inline base64 data, or a file.
fn pem(data: &Option<String>, file: &Option<PathBuf>) -> Result<Option<Vec<u8>>, String> {
    if let Some(data) = data {
        return base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map(Some)
            .map_err(|e| format!("base64 data: {e}"));
    }
    match file {
        Some(f) => std::fs::read(f)
            .map(Some)
            .map_err(|e| format!("{}: {e}", f.display())),
        None => Ok(None),
    }
}

fn read_small(path: &Path) -> Result<String, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(1 << 20).read_to_string(&mut text))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text)
}

fn agent(ca: Option<&[u8]>, client: Option<&(Vec<u8>, Vec<u8>)>) -> Result<Agent, String> {
    let mut tls = TlsConfig::builder();
    if let Some(ca) = ca {
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(ca)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err("no certificate in the cluster's CA".into());
        }
        tls = tls.root_certs(RootCerts::new_with_certs(&certs));
    }
    if let Some((cert, key)) = client {
        let cert = Certificate::from_pem(cert).map_err(|e| format!("client certificate: {e}"))?;
        let key = PrivateKey::from_pem(key).map_err(|e| format!("client key: {e}"))?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&[cert], key)));
    }
    Ok(Agent::config_builder()
        .tls_config(tls.build())
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .build()
        .into())
}
