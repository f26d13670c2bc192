//! The remote cache: stages shared through object storage — S3 and S3-compatible servers
//! (Garage, MinIO, R2), Google Cloud Storage, Azure, WebDAV over HTTP(S) and a local
//! folder — through Apache Arrow's `object_store`.
//!
//! Layout under the remote's prefix, the same names as the local store's:
//! - `artifacts/<output-hash>/<path>`: every file of an artifact (content and records).
//! - `sealed/<output-hash>.json`: the artifact's manifest: each file's path, size and
//!   BLAKE3. Uploaded after every file.
//! - `keys/<stage-key>.json`: the key record (stage key -> output hash), uploaded last. A
//!   reader trusts a key only when its manifest is there and every file it downloads
//!   matches it; the folder it downloads into must then hash to the record's output, or
//!   nothing is published. So an upload killed half-way leaves nothing a reader takes,
//!   and two machines uploading one key at once write the same bytes to the same names.
//! - `runs/<id>.json` and `runs/sources/<hash>.json`: run records and their manifest texts.
//!
//! Credentials come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_PROFILE` and `~/.aws/credentials`; Google's and
//! Azure's own variables) and are never written into a record, a log or an error.
//!
//! A remote that cannot be reached never fails a run: the first failure marks it down for
//! the rest of the process (one warning), and the stage is computed locally.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use super::store::KeyRecord;
use crate::ids::{ContentHash, StageKey};

/// Whether stages published locally are uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Push {
    /// After each stage is published locally (the default).
    #[default]
    Always,
    /// Never: the remote is only read (`pipe push` still uploads when asked).
    Never,
}

/// The `[remote]` table of `pipe.toml`, with `--remote` and `PIPE_REMOTE` applied.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`,
    /// `https://host/path` (WebDAV) or `file:///path`.
    pub url: Option<String>,
    /// `"always"` (default) or `"never"`.
    #[serde(default)]
    pub push: Push,
    /// Seconds one request may take before it is given up (default 60).
    pub timeout: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProjectFile {
    remote: Option<RemoteConfig>,
}

/// The project settings file, beside `pipelines/`.
pub const PROJECT_FILE: &str = "pipe.toml";

impl RemoteConfig {
    /// The remote of a project, first found: `--remote URL` (`flag`), `PIPE_REMOTE`, the
    /// `[remote]` table of `pipe.toml` in `project_dir`. `None`: no remote. `--remote
    /// none` (or `PIPE_REMOTE=none`) turns a configured one off.
    pub fn resolve(flag: Option<&str>, project_dir: &Path) -> Result<Option<RemoteConfig>> {
        let file = project_dir.join(PROJECT_FILE);
        let mut cfg = match std::fs::read_to_string(&file) {
            Ok(text) => toml::from_str::<ProjectFile>(&text)
                .with_context(|| format!("{}", file.display()))?
                .remote
                .unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RemoteConfig::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        if let Some(env) = std::env::var("PIPE_REMOTE").ok().filter(|s| !s.is_empty()) {
            cfg.url = Some(env);
        }
        // `--remote` with no URL (as `verify --remote` takes it): the one set elsewhere.
        if let Some(f) = flag.filter(|f| !f.is_empty()) {
            cfg.url = Some(f.to_string());
        }
        if cfg.url.as_deref() == Some("none") {
            cfg.url = None;
        }
        Ok(cfg.url.is_some().then_some(cfg))
    }
}

/// One file of an artifact in the remote's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path in the artifact, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// BLAKE3, hex.
    pub blake3: String,
}

/// `sealed/<output>.json` in the remote: every file of one artifact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The artifact's content hash.
    pub output: ContentHash,
    /// Its files, in path order.
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// Bytes in all.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A stage found in the remote and downloaded into a folder (not yet published).
#[derive(Debug)]
pub struct Fetched {
    /// The remote's key record.
    pub record: KeyRecord,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Seconds the download took.
    pub seconds: f64,
}

/// What one artifact's upload did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pushed {
    /// The key was in the remote already: nothing sent.
    There,
    /// Uploaded: bytes and seconds.
    Sent(u64, f64),
}

/// Why a remote operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The remote is down (this call or an earlier one could not reach it): the caller
    /// goes on locally.
    #[error("the remote {url} cannot be reached: {why}")]
    Unreachable {
        /// The remote's URL.
        url: String,
        /// What failed.
        why: String,
    },
    /// The remote refused the credentials.
    #[error("the remote {url} refused the credentials: {why}. Check {vars}")]
    Credentials {
        /// The remote's URL.
        url: String,
        /// What it said.
        why: String,
        /// The variables that set them.
        vars: &'static str,
    },
    /// What the remote holds is damaged or incomplete: refused.
    #[error("{0}")]
    Refused(String),
    /// Anything else.
    #[error("the remote {url}: {why}")]
    Other {
        /// The remote's URL.
        url: String,
        /// What failed.
        why: String,
    },
}

/// A remote cache, open.
pub struct Remote {
    url: String,
    /// The URL as given, credentials and all (never shown): what a worker is handed.
    given: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    rt: tokio::runtime::Runtime,
    /// Whether published stages are uploaded.
    pub push: Push,
    requests: AtomicUsize,
    down: AtomicBool,
    /// The variables that hold its credentials (for errors).
    vars: &'static str,
    /// Secrets to blank out of any message.
    secrets: Vec<String>,
    /// Whether it is a WebDAV server: large files go up whole (there are no parts), one
    /// at a time (two uploads into one new folder would both create it, and the second
    /// `MKCOL` is refused), and a PUT is written in place, so two at once to one path can
    /// tear it.
    webdav: bool,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

/// Parts of one upload, when an artifact file is larger than this: multipart.
const PART: usize = 16 << 20;

/// Files downloaded or uploaded at once.
const AT_ONCE: usize = 4;

impl Remote {
    /// Open the remote `cfg` names (nothing is sent yet).
    pub fn open(cfg: &RemoteConfig) -> Result<Remote> {
        let raw = cfg.url.as_deref().context("no remote URL")?;
        let url = url::Url::parse(raw).map_err(|e| {
            anyhow::anyhow!(
                "remote `{}`: not a URL ({e}); expected s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, https://host/path or file:///path",
                redact_url(raw)
            )
        })?;
        let shown = redact_url(raw);
        let timeout = Duration::from_secs(cfg.timeout.unwrap_or(60).max(1));
        let options = object_store::ClientOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(Duration::from_secs(5).min(timeout));
        let retry = object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(15).min(timeout),
            ..Default::default()
        };
        let prefix = url.path().trim_matches('/').to_string();
        let env_true = |k: &str| std::env::var(k).is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        // Every secret the environment holds, blanked from whatever is said.
        let mut secrets: Vec<String> = [
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_SAS_KEY",
            "GOOGLE_SERVICE_ACCOUNT_KEY",
        ]
        .iter()
        .filter_map(|var| std::env::var(var).ok().filter(|v| v.len() >= 4))
        .collect();
        let (store, prefix, vars): (Arc<dyn ObjectStore>, String, &'static str) =
            match url.scheme() {
                "s3" | "s3a" => {
                    let mut b = object_store::aws::AmazonS3Builder::from_env()
                        .with_url(raw)
                        // Plain HTTP when asked (`AWS_ALLOW_HTTP=true`), or when the
                        // endpoint given is itself `http://` (a MinIO or Garage on a LAN).
                        .with_client_options(options.with_allow_http(
                            env_true("AWS_ALLOW_HTTP")
                                || std::env::var("AWS_ENDPOINT_URL")
                                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                                    .is_ok_and(|e| e.starts_with("http://")),
                        ))
                        .with_retry(retry);
                    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                        if let Some((id, secret, token)) = aws_profile()? {
                            secrets.push(secret.clone());
                            b = b.with_access_key_id(id).with_secret_access_key(secret);
                            if let Some(t) = token {
                                secrets.push(t.clone());
                                b = b.with_token(t);
                            }
                        }
                    }
                    if std::env::var_os("AWS_REGION").is_none()
                        && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                    {
                        b = b.with_region("us-east-1");
                    }
                    let store = b.build().map_err(|e| {
                        anyhow::anyhow!("remote {shown}: {}", scrub(&e.to_string(), &secrets))
                    })?;
                    (
                        Arc::new(store),
                        prefix,
                        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), AWS_ENDPOINT_URL and AWS_REGION",
                    )
                }
                "gs" => {
                    let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_url(raw)
                        .with_client_options(options)
                        .with_retry(retry)
                        .build()
                        .map_err(|e| anyhow::anyhow!("remote {shown}: {}", scrub(&e.to_string(), &secrets)))?;
                    (
                        Arc::new(store),
                        prefix,
                        "GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT)",
                    )
                }
                "az" | "azure" | "abfs" | "abfss" => {
                    let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_url(raw)
                        .with_client_options(options)
                        .with_retry(retry)
                        .build()
                        .map_err(|e| anyhow::anyhow!("remote {shown}: {}", scrub(&e.to_string(), &secrets)))?;
                    (
                        Arc::new(store),
                        prefix,
                        "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or a SAS token)",
                    )
                }
                "http" | "https" => {
                    // The server's root as the store's, the URL's path as the prefix: a
                    // folder of the path that is missing is then made (`MKCOL`) like any
                    // other, where a store rooted at the path would have to find it there.
                    // Only a plain path goes into object paths unchanged (they are escaped
                    // again on the way out); any other (a space, `~`, `%`) stays the
                    // store's root, which must then exist.
                    let plain = prefix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
                    let mut root = url.clone();
                    if plain {
                        root.set_path("/");
                    }
                    let mut options = options.with_allow_http(url.scheme() == "http");
                    if let Some((headers, said)) = basic_auth(&url)? {
                        // object_store sends the URL as it is: a user and password left in
                        // it would reach no server, and its errors would print them.
                        options = options.with_default_headers(headers);
                        secrets.extend(said);
                        let _ = root.set_username("");
                        let _ = root.set_password(None);
                    }
                    let store = object_store::http::HttpBuilder::new()
                        .with_url(root.as_str())
                        .with_client_options(options)
                        .with_retry(retry)
                        .build()
                        .map_err(|e| anyhow::anyhow!("remote {shown}: {e}"))?;
                    let prefix = if plain { prefix } else { String::new() };
                    (Arc::new(store), prefix, "the server's own settings")
                }
                "file" => {
                    let dir = url
                        .to_file_path()
                        .map_err(|()| anyhow::anyhow!("remote {shown}: not a local path"))?;
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("remote {shown}: cannot create {}", dir.display()))?;
                    let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                        .map_err(|e| anyhow::anyhow!("remote {shown}: {e}"))?;
                    (Arc::new(store), String::new(), "the folder's permissions")
                }
                other => bail!(
                    "remote {shown}: `{other}:` is not a kind of remote pipe knows (s3, gs, az, http, https, file)"
                ),
            };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Remote {
            given: raw.to_string(),
            url: shown,
            store,
            prefix: ObjPath::from(prefix),
            rt,
            push: cfg.push,
            requests: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            vars,
            secrets,
            webdav: matches!(url.scheme(), "http" | "https"),
        })
    }

    /// The remote's URL, as shown (no credentials in it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL as given, with the `user:password@` a WebDAV server may need: for a worker
    /// process's environment only (never for a command line, a record or a message).
    pub(crate) fn given_url(&self) -> Option<&str> {
        (self.given != self.url).then_some(self.given.as_str())
    }

    /// Requests sent so far by this process.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Whether an earlier call found the remote unreachable (it is not tried again).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    fn path(&self, rel: &str) -> ObjPath {
        let mut p = self.prefix.clone();
        for part in rel.split('/') {
            p = p.clone().join(part);
        }
        p
    }

    /// What an `object_store` error says, secrets blanked.
    fn said(&self, e: &object_store::Error) -> String {
        scrub(&e.to_string(), &self.secrets)
    }

    /// An `object_store` error in pipe's words, secrets blanked; a connection failure
    /// marks the remote down.
    fn error(&self, what: &str, e: object_store::Error) -> RemoteError {
        let why = self.said(&e);
        match e {
            object_store::Error::NotFound { .. } => RemoteError::Other {
                url: self.url.clone(),
                why: format!("{what}: not found"),
            },
            object_store::Error::Unauthenticated { .. }
            | object_store::Error::PermissionDenied { .. } => self.credentials(what, &why),
            // A status, not three digits anywhere (an artifact's hash holds many).
            _ if [
                "403 Forbidden",
                "401 Unauthorized",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
            ]
            .iter()
            .any(|w| why.contains(w)) =>
            {
                self.credentials(what, &why)
            }
            _ => {
                self.down.store(true, Ordering::Relaxed);
                RemoteError::Unreachable {
                    url: self.url.clone(),
                    why: format!("{what}: {}", short(&why)),
                }
            }
        }
    }

    /// Refused credentials: not tried again in this process either.
    fn credentials(&self, what: &str, why: &str) -> RemoteError {
        self.down.store(true, Ordering::Relaxed);
        RemoteError::Credentials {
            url: self.url.clone(),
            why: format!("{what}: {}", short(why)),
            vars: self.vars,
        }
    }

    fn guard(&self) -> Result<(), RemoteError> {
        match self.is_down() {
            true => Err(RemoteError::Unreachable {
                url: self.url.clone(),
                why: "it did not answer earlier in this run".into(),
            }),
            false => Ok(()),
        }
    }

    /// One object's bytes, or `None` when it is not there. Over WebDAV, a body that ends
    /// short of its length is read again, twice at most, after a pause: another machine
    /// is rewriting the object in place this moment (the server sent the old length).
    fn get_opt(&self, rel: &str) -> Result<Option<bytes::Bytes>, RemoteError> {
        self.guard()?;
        let path = self.path(rel);
        let mut tries = 0;
        loop {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let got = self.rt.block_on(async {
                match self.store.get(&path).await {
                    Ok(g) => Ok(g.bytes().await.map(Some)),
                    Err(object_store::Error::NotFound { .. }) => Ok(Ok(None)),
                    Err(e) => Err(e),
                }
            });
            match got {
                Ok(Ok(bytes)) => return Ok(bytes),
                Ok(Err(e)) if self.webdav && !timed_out(&e) && tries < 2 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(250 * tries));
                }
                // The server answered; the object kept changing under the reads: no outage.
                Ok(Err(e)) if self.webdav && !timed_out(&e) => {
                    return Err(self.refused(
                        rel,
                        format!(
                            "its body ended short three times ({})",
                            short(&self.said(&e))
                        ),
                    ))
                }
                Ok(Err(e)) | Err(e) => return Err(self.error(&format!("reading {rel}"), e)),
            }
        }
    }

    /// Whether an object is there.
    fn exists(&self, rel: &str) -> Result<bool, RemoteError> {
        self.guard()?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let path = self.path(rel);
        match self.rt.block_on(self.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(&format!("looking for {rel}"), e)),
        }
    }

    fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        self.guard()?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let path = self.path(rel);
        self.rt
            .block_on(self.put_whole(&path, rel, PutPayload::from(bytes)))
    }

    /// One JSON object (`what` it is, for errors), or `None` when it is not there. One
    /// that does not parse is read again, twice at most, after a pause (another machine
    /// pushing the same key may be rewriting it this moment, which a WebDAV server shows
    /// half-written); still unreadable, it is refused.
    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        rel: &str,
        what: &str,
    ) -> Result<Option<T>, RemoteError> {
        let mut tries = 0;
        loop {
            let Some(bytes) = self.get_opt(rel)? else {
                return Ok(None);
            };
            match serde_json::from_slice(&bytes) {
                Ok(v) => return Ok(Some(v)),
                Err(_) if tries < 2 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(250 * tries));
                }
                Err(e) => {
                    return Err(RemoteError::Refused(format!(
                        "{}/{rel}: {what} does not read ({e})",
                        self.url
                    )))
                }
            }
        }
    }

    /// The key record of `key` in the remote, when it is there.
    pub fn lookup(&self, key: &StageKey) -> Result<Option<KeyRecord>, RemoteError> {
        let rel = format!("keys/{key}.json");
        let Some(rec) = self.get_json::<KeyRecord>(&rel, "the key record")? else {
            return Ok(None);
        };
        if rec.key != *key {
            let why = format!(
                "the record names key {}, not {}",
                rec.key.short(),
                key.short()
            );
            return Err(self.refused(&rel, why));
        }
        Ok(Some(rec))
    }

    /// The manifest of artifact `output`, when it is there.
    pub fn manifest(&self, output: &ContentHash) -> Result<Option<Manifest>, RemoteError> {
        let rel = format!("sealed/{output}.json");
        let Some(m) = self.get_json::<Manifest>(&rel, "the manifest")? else {
            return Ok(None);
        };
        if m.output != *output {
            let why = format!(
                "the manifest is of artifact {}, not {}",
                m.output.short(),
                output.short()
            );
            return Err(self.refused(&rel, why));
        }
        if let Some(f) = m
            .files
            .iter()
            .find(|f| f.blake3.len() != 64 || !f.blake3.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            let why = format!("the hash of `{}` is not a BLAKE3", f.path.escape_debug());
            return Err(self.refused(&rel, why));
        }
        if let Some(f) = m.files.iter().find(|f| !plain_relative(&f.path)) {
            let why = format!(
                "the file name `{}` leaves the artifact",
                f.path.escape_debug()
            );
            return Err(self.refused(&rel, why));
        }
        Ok(Some(m))
    }

    /// Object `rel` of this remote refused, with why.
    fn refused(&self, rel: &str, why: String) -> RemoteError {
        RemoteError::Refused(format!("{}/{rel}: {why}", self.url))
    }

    /// Download the artifact of `key` into `into` (an empty folder), each file checked
    /// against the remote's manifest as it arrives. `Ok(None)`: the key is not in the
    /// remote. A file whose size or BLAKE3 differs from the manifest, or a key without
    /// its manifest, is [`RemoteError::Refused`] (the folder is then to be removed).
    pub fn fetch(&self, key: &StageKey, into: &Path) -> Result<Option<Fetched>, RemoteError> {
        let t = Instant::now();
        let Some(record) = self.lookup(key)? else {
            return Ok(None);
        };
        let Some(manifest) = self.manifest(&record.output)? else {
            return Err(RemoteError::Refused(format!(
                "{}: key {} is there but the manifest of its artifact {} is not (an upload that did not finish, or a damaged remote)",
                self.url,
                key.short(),
                record.output.short()
            )));
        };
        self.download(&manifest, into)?;
        Ok(Some(Fetched {
            bytes: manifest.bytes(),
            record,
            seconds: t.elapsed().as_secs_f64(),
        }))
    }

    /// Every file of `m` into `into`, several at once, each checked as it arrives.
    pub fn download(&self, m: &Manifest, into: &Path) -> Result<(), RemoteError> {
        self.guard()?;
        let jobs = m
            .files
            .iter()
            .map(|f| self.download_file(&m.output, f, into));
        let results: Vec<Result<(), RemoteError>> = self.rt.block_on(
            futures_util::stream::iter(jobs)
                .buffer_unordered(AT_ONCE)
                .collect(),
        );
        results.into_iter().collect()
    }

    /// One file of an artifact, checked as it arrives. A file that does not match its
    /// manifest, or (over WebDAV) whose body ends short, is read again, twice at most,
    /// after a pause: another machine pushing the same key may be rewriting it this
    /// moment (the same bytes: names are content hashes), which a WebDAV server shows
    /// half-written. Still wrong after that: refused.
    async fn download_file(
        &self,
        output: &ContentHash,
        f: &ManifestFile,
        into: &Path,
    ) -> Result<(), RemoteError> {
        let mut tries = 0;
        loop {
            match self.download_once(output, f, into).await {
                Err(RemoteError::Refused(why)) if tries < 2 && why.contains(" is damaged: ") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(250 * tries)).await;
                }
                r => return r,
            }
        }
    }

    async fn download_once(
        &self,
        output: &ContentHash,
        f: &ManifestFile,
        into: &Path,
    ) -> Result<(), RemoteError> {
        let rel = object_of(output, f);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let to = into.join(&f.path);
        let local = |e: std::io::Error| RemoteError::Other {
            url: self.url.clone(),
            why: format!("cannot write {}: {e}", to.display()),
        };
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d).map_err(local)?;
        }
        let got = match self.store.get(&self.path(&rel)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RemoteError::Refused(format!(
                    "{}/{rel}: missing, though the artifact's manifest lists it",
                    self.url
                )))
            }
            Err(e) => return Err(self.error(&format!("reading {rel}"), e)),
        };
        let mut file = std::fs::File::create(&to).map_err(local)?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut stream = got.into_stream();
        let cut = |e: object_store::Error| match self.webdav && !timed_out(&e) {
            // Another machine rewriting it in place this moment: read again.
            true => RemoteError::Refused(format!(
                "{}/{rel} is damaged: its body ended short ({})",
                self.url,
                short(&self.said(&e))
            )),
            false => self.error(&format!("reading {rel}"), e),
        };
        while let Some(chunk) = stream.try_next().await.map_err(cut)? {
            size += chunk.len() as u64;
            if size > f.size {
                break;
            }
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(local)?;
        }
        let hash = hasher.finalize().to_hex().to_string();
        if size != f.size || hash != f.blake3 {
            return Err(RemoteError::Refused(format!(
                "{}/{rel} is damaged: {}{} bytes with BLAKE3 {}, its manifest says {} bytes with {}",
                self.url,
                if size > f.size { "more than " } else { "" },
                size.min(f.size + 1),
                &hash[..12],
                f.size,
                &f.blake3[..f.blake3.len().min(12)]
            )));
        }
        Ok(())
    }

    /// Upload artifact `dir` as what `rec` says (`rec.output`) unless its key is there
    /// already, readable and with its manifest: every file, then its manifest, then the
    /// key record. Idempotent: the names are content-addressed, so a second upload of one
    /// key writes the same bytes.
    /// `files_sent` is called between the files and the manifest (a test's fault point).
    pub fn push_artifact(
        &self,
        rec: &KeyRecord,
        dir: &Path,
        files_sent: &dyn Fn(),
    ) -> Result<Pushed, RemoteError> {
        // There and readable, with its manifest: nothing to send. A key record or a
        // manifest that does not read (damaged, or torn by an older pipe over WebDAV), or a
        // key without its manifest, is written again: the next push mends the remote.
        let sound = match self.lookup(&rec.key) {
            Ok(Some(there)) => match self.manifest(&there.output) {
                Ok(found) => found.is_some(),
                Err(RemoteError::Refused(_)) => false,
                Err(e) => return Err(e),
            },
            Ok(None) | Err(RemoteError::Refused(_)) => false,
            Err(e) => return Err(e),
        };
        if sound {
            return Ok(Pushed::There);
        }
        let key_rel = format!("keys/{}.json", rec.key);
        let t = Instant::now();
        // What is sent is what the key says, re-hashed whole: a file damaged in place
        // (its size and times kept, so a stat check passed it) would otherwise go up with
        // a manifest that agrees with it, and every reader would refuse that key for good.
        let local = |why: String| RemoteError::Other {
            url: self.url.clone(),
            why,
        };
        let (hash, _) = crate::content::hash_dir(dir, crate::stages::records(rec.kind))
            .map_err(|e| local(format!("{e:#}")))?;
        if hash != rec.output.as_str() {
            return Err(local(format!(
                "not sent: the files of {} hash to {}, not to {} as its name says (damaged since it was sealed): run `pipe verify`, which moves it aside, and the next run makes it again",
                dir.display(),
                crate::ids::short(&hash),
                rec.output.short()
            )));
        }
        let m = manifest_of(dir, &rec.output).map_err(|e| RemoteError::Other {
            url: self.url.clone(),
            why: format!("{e:#}"),
        })?;
        self.send_files(&m, dir)?;
        files_sent();
        self.put_record(
            &format!("sealed/{}.json", rec.output),
            &m,
            |back: &Manifest| back.output == rec.output,
        )?;
        self.put_record(&key_rel, rec, |back: &KeyRecord| back.key == rec.key)?;
        Ok(Pushed::Sent(m.bytes(), t.elapsed().as_secs_f64()))
    }

    /// Send artifact `output` again from `dir` (this store's copy, checked sound by the
    /// caller): every file, then its manifest, over whatever the remote holds (`pipe
    /// verify --remote --repair`, for an artifact found damaged there).
    pub fn resend_artifact(&self, output: &ContentHash, dir: &Path) -> Result<(), RemoteError> {
        let m = manifest_of(dir, output).map_err(|e| RemoteError::Other {
            url: self.url.clone(),
            why: format!("{e:#}"),
        })?;
        self.send_files(&m, dir)?;
        self.put_record(&format!("sealed/{output}.json"), &m, |back: &Manifest| {
            back.output == *output
        })
    }

    /// Upload every file of manifest `m` from `dir` (a few at once; one at a time to a
    /// WebDAV server, where two uploads into one new folder would both make it).
    fn send_files(&self, m: &Manifest, dir: &Path) -> Result<(), RemoteError> {
        let uploads = m.files.iter().map(|f| self.upload_file(&m.output, f, dir));
        let results: Vec<Result<(), RemoteError>> = self.rt.block_on(
            futures_util::stream::iter(uploads)
                .buffer_unordered(if self.webdav { 1 } else { AT_ONCE })
                .collect(),
        );
        results.into_iter().collect()
    }

    /// PUT a record that other machines pushing the same key may be writing this moment
    /// with other bytes: a key record (their `seconds`, their summary) or a manifest
    /// (their `timings.json`). Any one machine's record is right; a torn one is not. A
    /// WebDAV server writes a PUT in place, so two at once can leave one record followed
    /// by the tail of a longer one, and both PUTs succeed. There it is read back, and
    /// written again after a random pause until it parses and is `sound` (any machine's
    /// record of this key): whoever wrote last reads the result after its own write, so
    /// a torn record is always seen by a writer still trying. Other stores replace an
    /// object whole.
    fn put_record<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        rel: &str,
        record: &T,
        sound: impl Fn(&T) -> bool,
    ) -> Result<(), RemoteError> {
        const TRIES: u64 = 8;
        let bytes = serde_json::to_vec(record).map_err(|e| RemoteError::Other {
            url: self.url.clone(),
            why: e.to_string(),
        })?;
        for t in 1..=TRIES {
            self.put(rel, bytes.clone())?;
            if !self.webdav {
                return Ok(());
            }
            let back = match self.get_opt(rel) {
                Ok(back) => back,
                // Still being rewritten by another machine: as torn.
                Err(RemoteError::Refused(_)) => None,
                Err(e) => return Err(e),
            };
            if back.is_some_and(|b| serde_json::from_slice(&b).is_ok_and(|r| sound(&r))) {
                return Ok(());
            }
            if t < TRIES {
                let pause = rand::random_range(20..=100 * t);
                std::thread::sleep(Duration::from_millis(pause));
            }
        }
        Err(RemoteError::Other {
            url: self.url.clone(),
            why: format!(
                "{rel} did not read back whole after {TRIES} writes (other machines writing it at the same moment each time)"
            ),
        })
    }

    /// One PUT of `payload` to `path` (`rel` in messages). Over WebDAV, again when making
    /// one of its folders failed: another machine uploading into the same new folder made
    /// it first (its `MKCOL` won, ours was refused), and now it is there.
    async fn put_whole(
        &self,
        path: &ObjPath,
        rel: &str,
        payload: PutPayload,
    ) -> Result<(), RemoteError> {
        // Each try makes at least one more folder level, so the path's depth bounds them.
        let mut tries = rel.matches('/').count() + 1;
        loop {
            match self.store.put(path, payload.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if tries > 1 && self.webdav && e.to_string().contains("MKCOL") => {
                    tries -= 1;
                }
                Err(e) => return Err(self.error(&format!("writing {rel}"), e)),
            }
        }
    }

    async fn upload_file(
        &self,
        output: &ContentHash,
        f: &ManifestFile,
        dir: &Path,
    ) -> Result<(), RemoteError> {
        let rel = object_of(output, f);
        let path = self.path(&rel);
        let from = dir.join(&f.path);
        let local = |e: std::io::Error| RemoteError::Other {
            url: self.url.clone(),
            why: format!("cannot read {}: {e}", from.display()),
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        if f.size as usize <= PART {
            let bytes = std::fs::read(&from).map_err(local)?;
            return self.put_whole(&path, &rel, PutPayload::from(bytes)).await;
        }
        if self.webdav {
            // WebDAV has no multipart upload: one PUT of the whole file, mapped rather
            // than read into memory.
            let file = std::fs::File::open(&from).map_err(local)?;
            // SAFETY: `from` is a file of a published artifact, which the store never
            // changes in place (it is replaced only by renaming another folder over it),
            // so the mapping's bytes stay as they are while the upload reads them.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(local)?;
            let payload = PutPayload::from(bytes::Bytes::from_owner(map));
            return self.put_whole(&path, &rel, payload).await;
        }
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| self.error(&format!("writing {rel}"), e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let sent = async {
            let mut file = std::fs::File::open(&from).map_err(local)?;
            let mut buf = vec![0u8; PART];
            loop {
                use std::io::Read;
                let n = file.read(&mut buf).map_err(local)?;
                if n == 0 {
                    return Ok(());
                }
                w.wait_for_capacity(AT_ONCE)
                    .await
                    .map_err(|e| self.error(&format!("writing {rel}"), e))?;
                w.write(&buf[..n]);
            }
        }
        .await;
        if let Err(e) = sent {
            // The parts sent so far are dropped on the server, not kept (and billed).
            let _ = w.abort().await;
            return Err(e);
        }
        w.finish()
            .await
            .map(|_| ())
            .map_err(|e| self.error(&format!("writing {rel}"), e))
    }

    /// Upload a run record and the manifest texts it points at (those not there yet).
    /// `record`: the record's bytes where they are not its file's (a Slurm run as its
    /// jobs completed it).
    pub fn push_record(
        &self,
        runs_dir: &Path,
        id: &str,
        sources: &str,
        record: Option<Vec<u8>>,
    ) -> Result<(), RemoteError> {
        let read = |p: PathBuf| {
            std::fs::read(&p).map_err(|e| RemoteError::Other {
                url: self.url.clone(),
                why: format!("cannot read {}: {e}", p.display()),
            })
        };
        if !sources.is_empty() {
            let rel = format!("runs/sources/{sources}.json");
            if !self.exists(&rel)? {
                self.put(
                    &rel,
                    read(runs_dir.join("sources").join(format!("{sources}.json")))?,
                )?;
            }
        }
        let bytes = match record {
            Some(b) => b,
            None => read(runs_dir.join(format!("{id}.json")))?,
        };
        self.put(&format!("runs/{id}.json"), bytes)
    }

    /// The names of the run records in the remote (`runs/<name>.json`; the journal says
    /// which are run ids).
    pub fn record_ids(&self) -> Result<Vec<String>, RemoteError> {
        self.guard()?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let dir = self.path("runs");
        let listed = self
            .rt
            .block_on(self.store.list_with_delimiter(Some(&dir)))
            .map_err(|e| self.error("listing runs/", e))?;
        let mut ids: Vec<String> = listed
            .objects
            .iter()
            .filter_map(|o| {
                o.location
                    .filename()?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// A run record's bytes, and those of its manifest texts (`sources`), from the remote.
    pub fn get_record(&self, id: &str) -> Result<Option<bytes::Bytes>, RemoteError> {
        self.get_opt(&format!("runs/{id}.json"))
    }

    /// The manifest texts of a run record (`runs/sources/<hash>.json`).
    pub fn get_sources(&self, hash: &str) -> Result<Option<bytes::Bytes>, RemoteError> {
        self.get_opt(&format!("runs/sources/{hash}.json"))
    }

    /// Every artifact manifest in the remote (`sealed/`).
    pub fn manifests(&self) -> Result<Vec<ContentHash>, RemoteError> {
        self.guard()?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let dir = self.path("sealed");
        let listed: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.store.list(Some(&dir)).try_collect())
            .map_err(|e| self.error("listing sealed/", e))?;
        Ok(listed
            .iter()
            .filter_map(|o| ContentHash::parse(o.location.filename()?.strip_suffix(".json")?))
            .collect())
    }
}

/// The manifest of artifact folder `dir` (content hash `output`): every file, hashed.
pub fn manifest_of(dir: &Path, output: &ContentHash) -> Result<Manifest> {
    let files = crate::content::content_files(dir, &[])?;
    let mut out = Vec::with_capacity(files.len());
    for rel in files {
        let full = dir.join(&rel);
        let size = std::fs::metadata(&full)
            .with_context(|| format!("cannot read {}", full.display()))?
            .len();
        out.push(ManifestFile {
            blake3: crate::content::hash_file(&full)?,
            path: rel,
            size,
        });
    }
    Ok(Manifest {
        output: output.clone(),
        files: out,
    })
}

/// Where file `f` of artifact `output` lives in the remote: `artifacts/<output>/<path>`,
/// or, for a record file (a training's `timings.json`, its plot: not content, so two
/// machines pushing one artifact have different ones), `records/<its BLAKE3>`, so that
/// neither overwrites the bytes the other's manifest names.
fn object_of(output: &ContentHash, f: &ManifestFile) -> String {
    if crate::stages::ALL_RECORDS.contains(&f.path.as_str()) {
        format!("records/{}", f.blake3)
    } else {
        format!("artifacts/{output}/{}", f.path)
    }
}

/// A path inside an artifact: relative, with no `..`, no empty or hidden-dot part.
fn plain_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\\'))
}

/// The first line of a long message, cut.
fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

/// The user and password of an `https://user:pw@host/path` URL as an HTTP Basic
/// `Authorization` header (marked sensitive: never printed), and the strings that must
/// never be shown (the password as written and as sent); `None` without a user.
fn basic_auth(url: &url::Url) -> Result<Option<(http::HeaderMap, Vec<String>)>> {
    use base64::Engine as _;
    if url.username().is_empty() && url.password().is_none() {
        return Ok(None);
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = decode(url.username());
    let password = decode(url.password().unwrap_or(""));
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = http::HeaderValue::from_str(&format!("Basic {token}"))
        .context("the remote URL's user and password do not make an HTTP header")?;
    value.set_sensitive(true);
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let said = [password, url.password().unwrap_or("").to_string(), token]
        .into_iter()
        .filter(|s| s.len() >= 4)
        .collect();
    Ok(Some((headers, said)))
}

/// Whether `e` is this client's own timeout or a failed connection: the server stopped
/// answering (an outage, which marks the remote down), not an object that another machine
/// is rewriting in place under the read (a body that ends short, read again).
fn timed_out(e: &object_store::Error) -> bool {
    let mut at: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = at {
        if let Some(h) = err.downcast_ref::<object_store::client::HttpError>() {
            if matches!(
                h.kind(),
                object_store::client::HttpErrorKind::Timeout
                    | object_store::client::HttpErrorKind::Connect
            ) {
                return true;
            }
        }
        at = err.source();
    }
    false
}

/// `s` with every secret blanked.
fn scrub(s: &str, secrets: &[String]) -> String {
    let mut out = s.to_string();
    for v in secrets {
        out = out.replace(v.as_str(), "<secret>");
    }
    out
}

/// A command-line argument with any URL in it (`URL`, `--flag=URL`) without its user and
/// password.
pub fn redact_arg(arg: &str) -> String {
    match arg.split_once('=') {
        Some((flag, value)) if flag.starts_with("--") => format!("{flag}={}", redact_url(value)),
        _ => redact_url(arg),
    }
}

/// A URL without its user and password.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => raw.to_string(),
        // Not a URL the parser takes (a `/`, `#` or `?` in a password reads as the end of
        // the host): whatever may be a login, up to the last `@`, is blanked as text.
        Err(_) => match raw.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') => {
                let at = rest.rfind('@').expect("checked");
                format!("{scheme}://***{}", &rest[at..])
            }
            _ => raw.to_string(),
        },
    }
}

/// Credentials of the AWS profile `AWS_PROFILE` (default `default`) from
/// `AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`: (key id, secret, session token).
fn aws_profile() -> Result<Option<(String, String, Option<String>)>> {
    let file = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(f) => PathBuf::from(f),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".aws").join("credentials"),
            None => return Ok(None),
        },
    };
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(None);
    };
    let named = std::env::var("AWS_PROFILE").ok();
    profile_credentials(&text, named.as_deref(), &file)
}

/// The credentials of profile `named` (None: `default`, which may be absent) in the text
/// of an AWS credentials file (an INI file) read from `file`.
fn profile_credentials(
    text: &str,
    named: Option<&str>,
    file: &Path,
) -> Result<Option<(String, String, Option<String>)>> {
    let ini = ini::Ini::load_from_str(text)
        .map_err(|e| anyhow::anyhow!("{}: not an AWS credentials file: {e}", file.display()))?;
    let profile = named.unwrap_or("default");
    let section = ini.section(Some(profile));
    let get = |k: &str| {
        section
            .and_then(|s| s.get(k))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(i), Some(s)) => Ok(Some((i, s, get("aws_session_token")))),
        (None, None) if named.is_none() => Ok(None),
        _ => bail!(
            "{}: profile `{profile}` has no aws_access_key_id and aws_secret_access_key",
            file.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_profiles_are_read_from_the_credentials_file() {
        let text = "# team keys\n[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key=s3cr3t\n\n[ci]\naws_access_key_id=AKIACI\naws_secret_access_key = ci-secret\naws_session_token = tok\n[broken]\naws_access_key_id=AKIAX\n";
        let f = Path::new("/home/me/.aws/credentials");
        assert_eq!(
            profile_credentials(text, None, f).unwrap(),
            Some(("AKIADEFAULT".into(), "s3cr3t".into(), None))
        );
        assert_eq!(
            profile_credentials(text, Some("ci"), f).unwrap(),
            Some(("AKIACI".into(), "ci-secret".into(), Some("tok".into())))
        );
        // A named profile that is missing or half written is an error naming the file.
        for bad in ["broken", "nope"] {
            let e = profile_credentials(text, Some(bad), f)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("/home/me/.aws/credentials") && e.contains(bad),
                "{e}"
            );
        }
        // No default profile and none asked for: no credentials from the file.
        assert_eq!(profile_credentials("[ci]\n", None, f).unwrap(), None);
    }

    #[test]
    fn names_that_leave_the_artifact_are_refused() {
        for ok in ["model.safetensors", "a/b.json", "x..y"] {
            assert!(plain_relative(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\..\\b",
        ] {
            assert!(!plain_relative(bad), "{bad}");
        }
    }

    #[test]
    fn urls_lose_their_passwords_and_messages_their_secrets() {
        assert_eq!(
            redact_url("https://me:hunter2@dav.example.com/pipe"),
            "https://dav.example.com/pipe"
        );
        assert_eq!(redact_url("s3://bucket/p"), "s3://bucket/p");
        // A password the URL parser cannot take (`/`, `#` or `?` in it): blanked as text.
        for raw in [
            "https://ana:ab/cd@host/p",
            "https://ana:ab#cd@host/p",
            "https://ana:a?b@host/p",
        ] {
            let shown = redact_url(raw);
            assert_eq!(shown, "https://***@host/p", "{raw}");
        }
        assert_eq!(
            redact_arg("--remote=https://me:hunter2@dav.example.com/p"),
            "--remote=https://dav.example.com/p"
        );
        assert_eq!(redact_arg("train.lr=0.01"), "train.lr=0.01");
        assert_eq!(
            scrub("signature for abcd1234 failed", &["abcd1234".into()]),
            "signature for <secret> failed"
        );
    }

    #[test]
    fn the_remote_is_set_by_flag_then_environment_then_pipe_toml() {
        let dir = tempfile::tempdir().unwrap();
        // (PIPE_REMOTE is not set in the unit tests' environment.)
        assert!(std::env::var_os("PIPE_REMOTE").is_none());
        assert!(RemoteConfig::resolve(None, dir.path()).unwrap().is_none());
        std::fs::write(
            dir.path().join(PROJECT_FILE),
            "[remote]\nurl = \"s3://team/pipe\"\npush = \"never\"\n",
        )
        .unwrap();
        let c = RemoteConfig::resolve(None, dir.path()).unwrap().unwrap();
        assert_eq!(c.url.as_deref(), Some("s3://team/pipe"));
        assert_eq!(c.push, Push::Never);
        let c = RemoteConfig::resolve(Some("file:///tmp/x"), dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(c.url.as_deref(), Some("file:///tmp/x"));
        assert!(RemoteConfig::resolve(Some("none"), dir.path())
            .unwrap()
            .is_none());
        std::fs::write(
            dir.path().join(PROJECT_FILE),
            "[remote]\npushh = \"never\"\n",
        )
        .unwrap();
        let e = format!("{:#}", RemoteConfig::resolve(None, dir.path()).unwrap_err());
        assert!(e.contains("pipe.toml") && e.contains("pushh"), "{e}");
    }

    #[test]
    fn a_local_remote_round_trips_an_artifact_and_refuses_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let remote_dir = dir.path().join("remote");
        let cfg = RemoteConfig {
            url: Some(format!("file://{}", remote_dir.display())),
            ..Default::default()
        };
        let r = Remote::open(&cfg).unwrap();
        let art = dir.path().join("art");
        std::fs::create_dir_all(art.join("sub")).unwrap();
        std::fs::write(art.join("a.txt"), b"alpha").unwrap();
        std::fs::write(art.join("sub/b.bin"), vec![7u8; 1000]).unwrap();
        let output = ContentHash::new(
            crate::content::hash_dir(&art, crate::stages::ALL_RECORDS)
                .unwrap()
                .0,
        );
        let key = StageKey::new("cd".repeat(32));
        let rec = KeyRecord {
            key: key.clone(),
            kind: crate::manifest::StageKind::Split,
            stage: "split".into(),
            output: output.clone(),
            summary: "s".into(),
            seconds: 1.0,
        };
        assert!(r
            .fetch(&key, &dir.path().join("nothing"))
            .unwrap()
            .is_none());
        assert!(matches!(
            r.push_artifact(&rec, &art, &|| {}).unwrap(),
            Pushed::Sent(1005, _)
        ));
        assert_eq!(r.push_artifact(&rec, &art, &|| {}).unwrap(), Pushed::There);
        let into = dir.path().join("into");
        let f = r.fetch(&key, &into).unwrap().unwrap();
        assert_eq!(f.bytes, 1005);
        assert_eq!(f.record.output, output);
        assert_eq!(
            std::fs::read(into.join("sub/b.bin")).unwrap(),
            vec![7u8; 1000]
        );
        // One byte changed in the remote: refused, naming the file.
        let stored = remote_dir.join(format!("artifacts/{output}/a.txt"));
        std::fs::write(&stored, b"alphb").unwrap();
        let e = r.fetch(&key, &dir.path().join("into2")).unwrap_err();
        assert!(matches!(e, RemoteError::Refused(_)), "{e}");
        assert!(e.to_string().contains("a.txt is damaged"), "{e}");
        // A key whose manifest is gone (an upload that stopped before it): refused, and
        // the next push of the key sends it again.
        let sealed = remote_dir.join(format!("sealed/{output}.json"));
        std::fs::remove_file(&sealed).unwrap();
        let e = r.fetch(&key, &dir.path().join("into3")).unwrap_err();
        assert!(e.to_string().contains("manifest"), "{e}");
        std::fs::write(&stored, b"alpha").unwrap();
        assert!(matches!(
            r.push_artifact(&rec, &art, &|| {}).unwrap(),
            Pushed::Sent(1005, _)
        ));
        assert!(r.fetch(&key, &dir.path().join("into4")).unwrap().is_some());
        // A key record or a manifest that does not read: refused, and mended by a push.
        for damaged in [remote_dir.join(format!("keys/{key}.json")), sealed] {
            let whole = std::fs::read(&damaged).unwrap();
            std::fs::write(&damaged, [&whole[..], b"}\"x\""].concat()).unwrap();
            let e = r.fetch(&key, &dir.path().join("into5")).unwrap_err();
            assert!(matches!(e, RemoteError::Refused(_)), "{e}");
            assert!(e.to_string().contains("does not read"), "{e}");
            assert!(matches!(
                r.push_artifact(&rec, &art, &|| {}).unwrap(),
                Pushed::Sent(1005, _)
            ));
            assert_eq!(std::fs::read(&damaged).unwrap(), whole);
            let _ = std::fs::remove_dir_all(dir.path().join("into5"));
        }
        assert_eq!(r.push_artifact(&rec, &art, &|| {}).unwrap(), Pushed::There);
        // Damaged here in place since it was sealed (a stat check cannot see it): not sent
        // under a key whose readers would refuse it for good; nothing of it goes up.
        std::fs::write(art.join("a.txt"), b"alphc").unwrap();
        let other = KeyRecord {
            key: StageKey::new("ef".repeat(32)),
            ..rec.clone()
        };
        let e = r.push_artifact(&other, &art, &|| {}).unwrap_err();
        assert!(e.to_string().contains("not sent"), "{e}");
        assert!(e.to_string().contains("pipe verify"), "{e}");
        assert!(!remote_dir.join(format!("keys/{}.json", other.key)).exists());
    }
}
