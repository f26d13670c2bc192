//! `pipe watch`: a process that holds the kernel's file events (inotify) over the dataset
//! folders that runs ask about, so that a run can trust its last fingerprint of a folder
//! in which nothing happened since, without a `stat` of each of its files.
//!
//! - A run asks the watcher for a **token** of a folder ([`ask`]) before it fingerprints
//!   it, and writes the token beside the fingerprint (`statcache/<id>.watch`, see
//!   `fingerprint.rs`). The next run asks again: the same token means that no event
//!   happened in the folder since the first asked, so the fingerprint still holds.
//! - A token is `<watcher>.<epoch>.<events>`: which watcher process, which set of watches
//!   over the folder, and how many reads of events it has had since they were made. Any
//!   event bumps it. The watcher reads every queued event before it answers, and the
//!   kernel queues an event before the call that caused it returns, so every change made
//!   before a run asks is counted. (A close comes late where another process still holds
//!   the file: a child forked while it was open, until it runs its program. That event
//!   then changes the token once more, and costs the next run a walk: never a stale
//!   answer.)
//! - Watched: every folder below the root (a watch on a folder sees each change made to
//!   its entries through it); each file with more than one hard link (a change through
//!   another name); and for each symbolic link, resolved one component at a time, the
//!   folder holding each link met on the way (retargeting it is an event there), each
//!   folder the path passes through (its own move or deletion), the folder holding the
//!   target (created or renamed over there), and the target; a dangling link's last folder.
//!   An entry created or moved in, a watched folder deleted or moved, the kernel's queue
//!   overflowing, the root's path naming another folder (an ancestor renamed), or the
//!   mount table changing (a file system mounted inside the root raises no inotify event)
//!   rebuilds the watches before the next token: a new epoch.
//! - A run sends the root's (device, inode) as it sees it: a watcher that sees another
//!   folder at that path (another mount namespace) refuses.
//! - A folder is vouched for only on a local file system (ext4, XFS, Btrfs, tmpfs, ZFS,
//!   F2FS, overlayfs), link targets included. NFS, SMB, FUSE and the like see changes made
//!   by other machines, which raise no event here: there the runs stat every file, as
//!   without a watcher. A refused folder is tried again after a minute.
//! - Not seen, as by every inotify watcher (git's fsmonitor, watchman): a write through a
//!   memory mapping, and a hard link made from outside to a file that had one name when watched, then written through.
//!   The watches are made again every ten minutes, so such a change is trusted for at most
//!   that long (the run after a rebuild walks, and the walk sees it). A stage that reads a
//!   dataset walks it first and fails if it differs from what the run decided on (see
//!   `Engine::dataset_files`).
//! - At most 64 folders are watched at once; the one asked about least recently gives way.
//!
//! The watcher writes nothing in the store but, when it starts, its lock (`watch.lock`,
//! held while it serves) and its Unix socket ([`socket_path`]); no request writes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use inotify::{EventMask, Inotify, WatchMask};
use serde::{Deserialize, Serialize};

/// The socket a store's watcher answers on: `watch.sock` in the store, or, where that
/// path is too long for a Unix socket (108 bytes), one named by its hash in `/tmp`. Decided
/// on the store's canonical path, so that every spelling of it finds the one socket.
pub fn socket_path(store_root: &Path) -> PathBuf {
    let store = store_root
        .canonicalize()
        .unwrap_or_else(|_| store_root.to_path_buf());
    let inside = store.join("watch.sock");
    if inside.as_os_str().len() < 100 {
        return inside;
    }
    let id = blake3::hash(store.as_os_str().as_encoded_bytes()).to_hex();
    Path::new("/tmp").join(format!("pipe-watch-{}.sock", &id[..24]))
}

#[derive(Serialize, Deserialize)]
struct Request {
    root: String,
    /// The folder's (device, inode) as the run sees it: a watcher in another mount
    /// namespace (a run in a container with the store bind-mounted) may see another
    /// folder at the same path, and must not vouch for it.
    #[serde(default)]
    id: Option<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply {
    /// The folder's token now.
    Token(String),
    /// Why the watcher does not vouch for the folder.
    Refused(String),
}

/// What the store's watcher says of folder `root` (canonical).
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// No watcher answers for this store (none started, or it has stopped).
    NoWatcher,
    /// Its token for the folder now.
    Token(String),
    /// It does not vouch for the folder, and why (a network file system, too many folders).
    Refused(String),
}

/// When this process last found the store's watcher stopped (`kill -STOP`, Ctrl-Z in its
/// terminal) or not answering: it is not asked again for [`SILENT_FOR`], so a run waits
/// on it once at most, and a long-lived process (the dashboard) asks again later.
static SILENT_SINCE: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

/// How long a watcher found silent is not asked.
const SILENT_FOR: Duration = Duration::from_secs(60);

/// The longest a run waits for an answer from a watcher that is running: a first request
/// for a big folder waits while its watches are made (about 5 s for a million files).
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Ask the watcher of the store at `store_root` for the token of folder `root` (a
/// canonical path). Anything that goes wrong on the way is [`Answer::NoWatcher`]: the run
/// then stats every file, as it would without one. A watcher that is stopped is found so
/// at once (its process state, by the pid the socket gives), not after the wait for a
/// busy one; one whose queue of connections is full is not waited for.
pub fn ask(store_root: &Path, root: &Path) -> Answer {
    let silent = |set: bool| {
        let mut since = SILENT_SINCE.lock().unwrap_or_else(|e| e.into_inner());
        if set {
            *since = Some(Instant::now());
        }
        since.is_some_and(|t| t.elapsed() < SILENT_FOR)
    };
    if silent(false) {
        return Answer::NoWatcher;
    }
    let sock = socket_path(store_root);
    // Only a watcher of this user is believed: another could answer with tokens that make
    // a run trust a folder that changed.
    // SAFETY: `geteuid` reads the process's user id; it cannot fail.
    let me = unsafe { libc::geteuid() };
    match std::fs::symlink_metadata(&sock) {
        Ok(m) if m.uid() == me => {}
        _ => return Answer::NoWatcher,
    }
    let id = match std::fs::metadata(root) {
        Ok(m) => (m.dev(), m.ino()),
        Err(_) => return Answer::NoWatcher,
    };
    let Some(root) = root.to_str() else {
        return Answer::Refused("its path is not UTF-8".into());
    };
    let ask = || -> std::io::Result<Option<Reply>> {
        let s = match connect_now(&sock) {
            // The queue of connections is full: the watcher takes none.
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            s => s?,
        };
        // The process that listens: this user's (its pid is 0 where it lives in a PID
        // namespace this process cannot see: then its state is not looked at).
        let Some((pid, uid)) = peer(&s) else {
            return Ok(None);
        };
        if uid != me {
            return Ok(None);
        }
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut line = serde_json::to_vec(&Request {
            root: root.into(),
            id: Some(id),
        })?;
        line.push(b'\n');
        (&s).write_all(&line)?;
        // Read in short waits; between them, a watcher that stopped is given up on.
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let began = Instant::now();
        let mut reply = Vec::new();
        let mut r = BufReader::new(&s);
        let mut traced = 0;
        loop {
            match state(pid) {
                Some('T' | 'Z' | 'X') => return Ok(None),
                // Stopped by a debugger; `strace` stops it for a moment at each call.
                Some('t') => {
                    traced += 1;
                    if traced >= 5 {
                        return Ok(None);
                    }
                }
                _ => traced = 0,
            }
            match r.read_until(b'\n', &mut reply) {
                Ok(_) => return Ok(serde_json::from_slice(&reply).ok()),
                Err(e)
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                        && began.elapsed() < ANSWER_WITHIN => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Ok(None),
            }
        }
    };
    match ask() {
        Ok(Some(Reply::Token(t))) => Answer::Token(t),
        Ok(Some(Reply::Refused(why))) => Answer::Refused(why),
        Ok(None) => {
            silent(true);
            Answer::NoWatcher
        }
        Err(_) => Answer::NoWatcher,
    }
}

/// A connection to the Unix socket `sock`, refused at once (not waited for) when the
/// listener's queue of connections is full: a stopped watcher stops taking them.
fn connect_now(sock: &Path) -> std::io::Result<UnixStream> {
    let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    // On a Unix socket a non-blocking connect completes at once or fails (EAGAIN: the
    // queue is full); it is never left in progress.
    s.connect(&socket2::SockAddr::unix(sock)?)?;
    s.set_nonblocking(false)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(s)))
}

/// The pid (0: not in this PID namespace) and user of the process that listens on the
/// other end of `s`.
fn peer(s: &UnixStream) -> Option<(i32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live, writable `ucred` and `len` its size; the kernel writes at
    // most `len` bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some((cred.pid, cred.uid))
}

/// The state of process `pid` (`R`, `S`, `D`; `T` stopped, `t` stopped by a tracer, `Z`
/// a zombie), where `/proc` tells it.
fn state(pid: i32) -> Option<char> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ...`: the state follows the last `)` (a name may hold one).
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next())
}

/// What a watch on a folder reports.
fn folder_mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// What a watch on one file (a hard link, a link's target) reports.
fn file_mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

/// Events after which the watches may no longer cover the folder: rebuilt before the
/// next token.
fn structural() -> EventMask {
    EventMask::CREATE
        | EventMask::MOVED_TO
        | EventMask::DELETE_SELF
        | EventMask::MOVE_SELF
        | EventMask::IGNORED
        | EventMask::Q_OVERFLOW
        | EventMask::UNMOUNT
}

/// File systems whose every change raises an event on this machine.
fn local_fs(path: &Path) -> Result<(), String> {
    const LOCAL: &[(i64, &str)] = &[
        (0xEF53, "ext4"),
        (0x5846_5342, "xfs"),
        (0x9123_683E, "btrfs"),
        (0x0102_1994, "tmpfs"),
        (0x2FC1_2FC1, "zfs"),
        (0xF2F5_2010, "f2fs"),
        (0x794C_7630, "overlayfs"),
    ];
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| "a NUL in its path".to_string())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable `statfs` the call fills.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(format!("statfs: {}", std::io::Error::last_os_error()));
    }
    #[allow(clippy::unnecessary_cast)] // `f_type`'s type differs between targets
    let kind = st.f_type as i64;
    match LOCAL.iter().find(|(k, _)| *k == kind) {
        Some(_) => Ok(()),
        None => Err(format!(
            "{} is on a file system of type {kind:#x}, not a local one (ext4, xfs, btrfs, tmpfs, zfs, f2fs, overlayfs): changes made elsewhere raise no event here",
            path.display()
        )),
    }
}

/// One folder's watches.
struct Watched {
    /// One inotify instance per folder: rebuilding drops it whole.
    inotify: Inotify,
    /// The folder's (device, inode) when watched: the path must still name it.
    id: (u64, u64),
    epoch: u64,
    events: u64,
    rebuild: bool,
    refused: Option<String>,
    folders: usize,
    files: usize,
    /// When the watches were made, and when a run last asked.
    built: Instant,
    asked: Instant,
}

/// Watches are made again this often, so that a change no event reports (a write through
/// a memory mapping, a hard link made from outside after the watches) is trusted for at
/// most this long: the run after a rebuild walks.
const REVALIDATE: Duration = Duration::from_secs(600);

/// A folder refused is tried again after this long (a race with a change, a limit raised).
const RETRY_REFUSED: Duration = Duration::from_secs(60);

/// Folders watched at once; the one asked about least recently gives way.
const MAX_ROOTS: usize = 64;

/// Most watches on one folder: beyond it, the folder is refused (its runs stat).
const MAX_WATCHES: usize = 1 << 20;

impl Watched {
    /// Watch `root`: each folder (a watch is made before the folder is read, so that a
    /// change after the listing raises an event), each hard-linked file, and each link.
    fn build(root: &Path, epoch: u64) -> Result<Watched> {
        let inotify = Inotify::init().context("inotify_init")?;
        let md = std::fs::metadata(root).with_context(|| format!("{}", root.display()))?;
        let mut w = Watched {
            inotify,
            id: (md.dev(), md.ino()),
            epoch,
            events: 0,
            rebuild: false,
            refused: None,
            folders: 0,
            files: 0,
            built: Instant::now(),
            asked: Instant::now(),
        };
        if let Err(why) = w.add_tree(root, md.dev()) {
            // The watches made so far are given back (the kernel's limit is per user).
            w.inotify = Inotify::init().context("inotify_init")?;
            w.refused = Some(why);
        }
        Ok(w)
    }

    fn add_tree(&mut self, root: &Path, dev: u64) -> Result<(), String> {
        local_fs(root)?;
        let mut seen: std::collections::HashSet<(u64, u64)> = Default::default();
        let mut todo: Vec<PathBuf> = vec![root.to_path_buf()];
        // An entry gone between its folder's listing and its own watch: its folder's watch
        // (made before the listing) has the event, so it is skipped here.
        let gone = |e: &std::io::Error| e.kind() == ErrorKind::NotFound;
        while let Some(dir) = todo.pop() {
            let md = match std::fs::metadata(&dir) {
                Ok(md) => md,
                Err(e) if gone(&e) && dir != root => continue,
                Err(e) => return Err(format!("{}: {e}", dir.display())),
            };
            if !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            if md.dev() != dev {
                local_fs(&dir)?;
            }
            if !self.add(&dir, folder_mask())? {
                continue;
            }
            self.folders += 1;
            let list = match std::fs::read_dir(&dir) {
                Ok(list) => list,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(format!("{}: {e}", dir.display())),
            };
            for e in list {
                let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
                let path = e.path();
                let Ok(t) = e.file_type() else { continue };
                if t.is_dir() {
                    todo.push(path);
                } else if t.is_symlink() {
                    self.add_link(&path, dev)?;
                    if path.is_dir() {
                        todo.push(path);
                    }
                } else if t.is_file() {
                    // Another name for the file elsewhere changes it with no event here.
                    if e.metadata().is_ok_and(|m| m.nlink() > 1) && self.add(&path, file_mask())? {
                        self.files += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// A symbolic link, resolved one component at a time: each folder that holds a link
    /// met on the way is watched (retargeting that link is an event there), each folder
    /// the path passes through is watched for its own move or deletion, the folder that
    /// holds the target for what is created, moved or deleted in it (a file renamed over
    /// the target is another file), and the target, when a file, for its changes. Where
    /// the path breaks off (a dangling link), the last folder it reaches is watched the
    /// same way, so the missing part appearing is an event; a loop adds nothing more (the
    /// fingerprint's walk fails on it).
    fn add_link(&mut self, link: &Path, dev: u64) -> Result<(), String> {
        let mut pending = link.to_path_buf();
        for _ in 0..40 {
            let mut done = PathBuf::new();
            let mut parts = pending.components().peekable();
            let mut next = None;
            while let Some(c) = parts.next() {
                done.push(c);
                let Ok(m) = std::fs::symlink_metadata(&done) else {
                    if let Some(holder) = done.parent().filter(|h| h.is_dir()) {
                        self.add_outside(holder, folder_mask(), dev)?;
                    }
                    return Ok(());
                };
                if m.file_type().is_symlink() {
                    let holder = done.parent().unwrap_or(Path::new("/")).to_path_buf();
                    self.add_outside(&holder, folder_mask(), dev)?;
                    let Ok(to) = std::fs::read_link(&done) else {
                        return Ok(());
                    };
                    let mut n = holder.join(to);
                    n.extend(parts);
                    next = Some(n);
                    break;
                }
                if m.is_dir() && parts.peek().is_some() {
                    self.add_outside(&done, WatchMask::MOVE_SELF | WatchMask::DELETE_SELF, dev)?;
                }
            }
            match next {
                Some(n) => pending = n,
                None => {
                    if let Some(holder) = pending.parent().filter(|h| h.is_dir()) {
                        self.add_outside(holder, folder_mask(), dev)?;
                    }
                    if pending.is_file() {
                        self.add_outside(&pending, file_mask(), dev)?;
                        self.files += 1;
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A watch on something a link reaches, which may be off the folder's file system.
    fn add_outside(&mut self, path: &Path, mask: WatchMask, dev: u64) -> Result<(), String> {
        if std::fs::metadata(path).is_ok_and(|m| m.dev() != dev) {
            local_fs(path)?;
        }
        self.add(path, mask).map(|_| ())
    }

    /// One watch (its mask added to any the same file or folder has already). `false`:
    /// the path is gone (its folder's watch has that event).
    fn add(&mut self, path: &Path, mask: WatchMask) -> Result<bool, String> {
        if self.folders + self.files >= MAX_WATCHES {
            return Err(format!("more than {MAX_WATCHES} folders and linked files"));
        }
        match self.inotify.watches().add(path, mask | WatchMask::MASK_ADD) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Err(format!(
                "the kernel's limit on watches was reached at {} (raise fs.inotify.max_user_watches: the folder is tried again a minute later)",
                path.display()
            )),
            Err(e) => Err(format!("cannot watch {}: {e}", path.display())),
        }
    }

    /// Read every queued event: any bumps the count; one that may leave something
    /// unwatched marks the watches for a rebuild.
    fn drain(&mut self, buf: &mut [u8]) {
        loop {
            match self.inotify.read_events(buf) {
                Ok(events) => {
                    let mut any = false;
                    for e in events {
                        any = true;
                        if e.mask.intersects(structural()) {
                            self.rebuild = true;
                        }
                    }
                    if !any {
                        return;
                    }
                    self.events += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.events += 1;
                    self.rebuild = true;
                    return;
                }
            }
        }
    }
}

/// The watcher's state: the folders asked about so far.
struct Watcher {
    /// Which process this is (tokens of another watcher never match).
    id: u64,
    next_epoch: u64,
    roots: HashMap<PathBuf, Watched>,
    buf: Vec<u8>,
    /// The mount table (`/proc/self/mountinfo`): a file system mounted or unmounted
    /// inside a watched tree raises no inotify event, but the table's change makes the
    /// file poll with POLLPRI.
    mounts: Option<std::fs::File>,
}

impl Watcher {
    /// Whether the mount table changed since the last look (a poll that does not wait):
    /// then every folder's watches are made again before its next token.
    fn check_mounts(&mut self) {
        let Some(m) = &self.mounts else { return };
        let mut fd = libc::pollfd {
            fd: m.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one live, writable pollfd; a zero timeout.
        let rc = unsafe { libc::poll(&mut fd, 1, 0) };
        if rc > 0 && fd.revents & (libc::POLLPRI | libc::POLLERR) != 0 {
            self.remounted();
        }
    }

    /// The mount table changed: every folder's watches are made again.
    fn remounted(&mut self) {
        for r in self.roots.values_mut() {
            r.rebuild = true;
        }
    }

    fn token(&mut self, root: &Path, say: &mut dyn FnMut(String)) -> Reply {
        if !root.is_absolute() {
            return Reply::Refused(format!("{} is not an absolute path", root.display()));
        }
        self.check_mounts();
        // A few rebuilds at most while the folder keeps changing under the walk.
        for _ in 0..4 {
            if let Some(w) = self.roots.get_mut(root) {
                w.asked = Instant::now();
                w.drain(&mut self.buf);
                // The folder the path names now must be the one watched: an ancestor
                // renamed or replaced raises no event on the watches below it.
                let same = std::fs::metadata(root).is_ok_and(|m| (m.dev(), m.ino()) == w.id);
                let fresh = w.built.elapsed()
                    < match w.refused {
                        Some(_) => RETRY_REFUSED,
                        None => REVALIDATE,
                    };
                if !w.rebuild && same && fresh {
                    return match &w.refused {
                        Some(why) => Reply::Refused(why.clone()),
                        None => Reply::Token(format!("{:016x}.{}.{}", self.id, w.epoch, w.events)),
                    };
                }
            }
            self.next_epoch += 1;
            if !self.roots.contains_key(root) && self.roots.len() >= MAX_ROOTS {
                let least = self
                    .roots
                    .iter()
                    .min_by_key(|(_, w)| w.asked)
                    .map(|(r, _)| r.clone());
                if let Some(r) = least {
                    self.roots.remove(&r);
                }
            }
            match Watched::build(root, self.next_epoch) {
                Ok(w) => {
                    match &w.refused {
                        Some(why) => say(format!("not watching {}: {why}", root.display())),
                        None => say(format!(
                            "watching {} ({} folders, {} linked files)",
                            root.display(),
                            w.folders,
                            w.files
                        )),
                    }
                    self.roots.insert(root.to_path_buf(), w);
                }
                Err(e) => {
                    self.roots.remove(root);
                    return Reply::Refused(format!("{e:#}"));
                }
            }
        }
        Reply::Refused(format!("{} keeps changing", root.display()))
    }
}

/// Serve the store at `store_root` until killed: answer runs' requests for tokens, and
/// keep the events of the folders they named. `say` hears each folder watched.
pub fn serve(store_root: &Path, say: &mut dyn FnMut(String)) -> Result<()> {
    // A run that gave up on an answer has closed its end: the reply's write then fails
    // (EPIPE) instead of ending the watcher. (`pipe` restores SIGPIPE's default at start.)
    // SAFETY: setting a signal's disposition to "ignore"; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    if !store_root.join("keys").is_dir() {
        bail!(
            "no store at {} (run a pipeline first, or name it with --cache)",
            store_root.display()
        );
    }
    let lock_path = store_root.join("watch.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    if let Err(e) = lock.try_lock() {
        match e {
            std::fs::TryLockError::WouldBlock => bail!(
                "another `pipe watch` serves the store {} already",
                store_root.display()
            ),
            std::fs::TryLockError::Error(e) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
    }
    let sock = socket_path(store_root);
    // Held the lock: any socket there is a stopped watcher's.
    match std::fs::remove_file(&sock) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", sock.display()))
        }
        _ => {}
    }
    let listener = UnixListener::bind(&sock)
        .with_context(|| format!("cannot listen on {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("{}", sock.display()))?;
    listener.set_nonblocking(true)?;
    say(format!(
        "watching for the store {} on {}; folders are added as runs ask for them",
        store_root.display(),
        sock.display()
    ));
    let mut w = Watcher {
        id: rand::random(),
        next_epoch: 0,
        roots: HashMap::new(),
        buf: vec![0u8; 64 * 1024],
        mounts: std::fs::File::open("/proc/self/mountinfo").ok(),
    };
    if w.mounts.is_none() {
        say("note: /proc/self/mountinfo cannot be read: a file system mounted inside a watched folder is seen only when the watches are next made (within ten minutes)".into());
    }
    loop {
        let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
            .chain(w.roots.values().map(|r| r.inotify.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if let Some(m) = &w.mounts {
            fds.push(libc::pollfd {
                fd: m.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a live, writable array of `fds.len()` pollfd structs.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        // Keep the kernel's queues short (a full one drops events, and forces a rebuild).
        let buf = &mut w.buf;
        for r in w.roots.values_mut() {
            r.drain(buf);
        }
        // The poll above took the mount table's change (it is reported once per look).
        if w.mounts.is_some()
            && fds
                .last()
                .is_some_and(|f| f.revents & (libc::POLLPRI | libc::POLLERR) != 0)
        {
            w.remounted();
        }
        if fds[0].revents != 0 {
            loop {
                match listener.accept() {
                    Ok((s, _)) => answer(&mut w, s, say),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("accept"),
                }
            }
        }
    }
}

/// One request on connection `s`: a line of JSON naming a folder; the reply is a line.
/// A client that says nothing within a second is dropped.
fn answer(w: &mut Watcher, s: UnixStream, say: &mut dyn FnMut(String)) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    let mut line = String::new();
    let mut r = BufReader::new(&s).take(64 * 1024);
    if r.read_line(&mut line).is_err() {
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(q) => {
            let root = PathBuf::from(OsString::from(q.root));
            match (w.token(&root, say), q.id) {
                // Seen from here, the path names another folder than the run's.
                (Reply::Token(_), Some(id)) if w.roots.get(&root).is_some_and(|x| x.id != id) => {
                    Reply::Refused(format!(
                        "{} is another folder where this watcher runs (another mount namespace?)",
                        root.display()
                    ))
                }
                (Reply::Token(_), None) => Reply::Refused(
                    "the run did not say which folder it means (a pipe older than this watcher)"
                        .into(),
                ),
                (reply, _) => reply,
            }
        }
        Err(e) => Reply::Refused(format!("not a request: {e}")),
    };
    if let Ok(mut out) = serde_json::to_vec(&reply) {
        out.push(b'\n');
        let _ = (&s).write_all(&out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_file_systems_are_vouched_for() {
        let tmp = tempfile::tempdir().unwrap();
        // The test's temporary folder is on a local disk (or tmpfs) on these machines.
        assert_eq!(local_fs(tmp.path()), Ok(()));
        // proc is no file system a dataset lives on: refused, naming its type.
        let e = local_fs(Path::new("/proc")).unwrap_err();
        assert!(e.contains("/proc") && e.contains("0x9fa0"), "{e}");
        let e = local_fs(Path::new("/no/such/folder")).unwrap_err();
        assert!(e.contains("statfs"), "{e}");
    }

    /// A run says which folder (device, inode) it means: a watcher that sees another
    /// folder at that path (another mount namespace) refuses, and one asked without it
    /// (an older pipe) refuses too.
    #[test]
    fn a_folder_the_watcher_sees_otherwise_than_the_run_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let md = std::fs::metadata(&root).unwrap();
        let mut w = Watcher {
            id: 7,
            next_epoch: 0,
            roots: HashMap::new(),
            buf: vec![0; 4096],
            mounts: None,
        };
        let ask = |w: &mut Watcher, id: Option<(u64, u64)>| -> Reply {
            let (a, b) = UnixStream::pair().unwrap();
            let mut q = serde_json::to_vec(&Request {
                root: root.to_str().unwrap().into(),
                id,
            })
            .unwrap();
            q.push(b'\n');
            (&a).write_all(&q).unwrap();
            answer(w, b, &mut |_| {});
            let mut line = String::new();
            BufReader::new(&a).read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap()
        };
        let same = Some((md.dev(), md.ino()));
        assert!(matches!(ask(&mut w, same), Reply::Token(_)));
        match ask(&mut w, Some((md.dev(), md.ino() + 1))) {
            Reply::Refused(why) => assert!(why.contains("another mount namespace"), "{why}"),
            Reply::Token(t) => panic!("vouched with token {t}"),
        }
        assert!(matches!(ask(&mut w, None), Reply::Refused(_)));
    }

    #[test]
    fn a_long_store_path_gets_its_socket_in_the_temporary_folder() {
        let short = Path::new("/tmp/s/.pipe");
        assert_eq!(socket_path(short), short.join("watch.sock"));
        let long = PathBuf::from(format!("/tmp/{}/.pipe", "x".repeat(120)));
        let s = socket_path(&long);
        assert!(s.starts_with("/tmp"), "{s:?}");
        assert!(s.as_os_str().len() < 100, "{s:?}");
        assert_ne!(s, socket_path(&long.join("other")));
    }
}
