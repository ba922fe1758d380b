//! Connections to the master and the storage nodes, re-established on
//! demand when a transport error breaks them.
//!
//! Calls made on a FUSE session thread go over that thread's own blocking
//! connection to the master or node ([`BlockingClient`]): the thread writes
//! the request and reads the answer itself, with no hand-off to a dispatch
//! task and back. Calls from async tasks (uploads, background releases),
//! calls a request runs several of at once (fsync's syncs of every node),
//! and the calls that take or drop open references (`create`, `open`,
//! `release`: the master counts them per connection) use the shared
//! multiplexed connection.

use crate::error::{CallFailure, ClientError, ConnectKind, Result, TransportError};
use crate::leases::DirLeases;
use futures::future::BoxFuture;
use serde::{de::DeserializeOwned, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use std::time::Instant;
use stripefs_daemon::lock;
use stripefs_proto::net::{connect_channel, connect_stream, BlockingClient, ConnectError, Secret};
use stripefs_proto::ops::*;
use stripefs_proto::types::{Attr, ChunkCommit, NewEntry};
use stripefs_proto::InodeId;
use stripefs_proto::{
    FsError, MasterServiceClient, MasterServiceRequest, MasterServiceResponse, NodeServiceClient, NodeServiceRequest,
    NodeServiceResponse,
};
use tarpc::client::RpcError;

/// The master client every call site uses.
pub type MasterClient = MasterServiceClient<CallStub<MasterServiceRequest, MasterServiceResponse>>;
/// The storage node client every call site uses.
pub type NodeClient = NodeServiceClient<CallStub<NodeServiceRequest, NodeServiceResponse>>;

/// How a call travels.
#[derive(Debug)]
pub enum CallStub<Req, Resp> {
    /// The shared multiplexed connection.
    Shared(tarpc::client::Channel<Req, Resp>),
    /// The calling thread's own blocking connection with this key.
    Own(OwnKey),
}

impl<Req, Resp> Clone for CallStub<Req, Resp> {
    fn clone(&self) -> Self {
        match self {
            CallStub::Shared(c) => CallStub::Shared(c.clone()),
            CallStub::Own(k) => CallStub::Own(k.clone()),
        }
    }
}

/// Names a thread's own connection: the pool it belongs to (a
/// [`MasterConn`] or [`NodePool`]) and the peer's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnKey {
    pool: u64,
    addr: Arc<str>,
}

impl<Req, Resp> tarpc::client::stub::Stub for CallStub<Req, Resp>
where
    Req: tarpc::RequestName + Serialize,
    Resp: DeserializeOwned,
{
    type Req = Req;
    type Resp = Resp;

    async fn call(&self, ctx: tarpc::context::Context, request: Req) -> std::result::Result<Resp, RpcError> {
        match self {
            CallStub::Shared(c) => c.call(ctx, request).await,
            // Blocking is fine: only threads that block on every request
            // anyway (FUSE session threads) have own connections.
            CallStub::Own(key) => OWN.with(|o| {
                let mut own = o.borrow_mut();
                let Some(client) = own.conns.get_mut(key) else { return Err(RpcError::Shutdown) };
                let r = client.call(ctx, request);
                // After an error the stream may hold half an answer: drop it.
                if r.is_err() {
                    own.conns.remove(key);
                }
                r
            }),
        }
    }
}

/// A thread's own connections, and whether the thread wants them.
#[derive(Default)]
struct Own {
    enabled: bool,
    conns: HashMap<OwnKey, BlockingClient>,
}

thread_local! {
    static OWN: RefCell<Own> = RefCell::new(Own::default());
}

/// Marks the calling thread as one that blocks on each request (a FUSE
/// session thread): its calls then use connections of its own.
/// Never call it on an async runtime's worker thread.
pub fn use_own_connections() {
    OWN.with(|o| o.borrow_mut().enabled = true);
}

fn wants_own() -> bool {
    OWN.with(|o| o.borrow().enabled)
}

/// Runs blocking work (disk reads): right here on a thread that blocks on
/// each request anyway (a FUSE session thread: no hand-off), else on the
/// blocking pool, away from the async runtime's workers.
pub(crate) async fn run_blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    if wants_own() {
        return f();
    }
    tokio::task::spawn_blocking(f).await.map_err(|e| TransportError::task("blocking", e))?
}

/// This thread's own connection to `key`, made now if needed.
async fn own_stub<Req, Resp>(key: OwnKey, secret: &Secret) -> Result<CallStub<Req, Resp>> {
    if !OWN.with(|o| o.borrow().conns.contains_key(&key)) {
        let stream = connect_stream(&key.addr, secret, CONNECT_TIMEOUT)
            .await
            .map_err(|e| TransportError::connect(&key.addr, &e))?;
        let client = BlockingClient::new(stream).map_err(|e| TransportError::Connect {
            addr: key.addr.to_string(),
            kind: ConnectKind::Unreachable,
            detail: format!("setting up a connection to {}: {e}", key.addr),
        })?;
        OWN.with(|o| o.borrow_mut().conns.insert(key.clone(), client));
    }
    Ok(CallStub::Own(key))
}

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// Time to connect and authenticate.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of a metadata call.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a chunk transfer.
pub const DATA_TIMEOUT: Duration = Duration::from_secs(120);

fn is_broken(e: &RpcError) -> bool {
    matches!(e, RpcError::Shutdown | RpcError::Send(_) | RpcError::Channel(_))
}

/// A namespace mutation (one `stripefs_proto::ops` type) and the RPC that
/// carries it: [`MasterConn::mutate`] sends any of them the same way, with
/// a request id that makes its retries safe.
pub trait Mutation: Clone + Send + Sync + 'static {
    /// The master's answer.
    type Reply: Send + 'static;
    /// Sends `req` on `c`.
    fn send(
        c: MasterClient,
        ctx: tarpc::context::Context,
        req: Request<Self>,
    ) -> impl Future<Output = std::result::Result<std::result::Result<Acked<Self::Reply>, FsError>, RpcError>> + Send;
    /// The inode the change created, if it creates one (a replay asks
    /// for it back).
    fn created(_reply: &Self::Reply) -> Option<InodeId> {
        None
    }
}

macro_rules! mutation {
    ($($op:ident => $method:ident -> $reply:ty $(, created |$r:ident| $created:expr)?;)*) => {$(
        impl Mutation for $op {
            type Reply = $reply;
            fn send(
                c: MasterClient,
                ctx: tarpc::context::Context,
                req: Request<Self>,
            ) -> impl Future<Output = std::result::Result<std::result::Result<Acked<$reply>, FsError>, RpcError>> + Send {
                async move { c.$method(ctx, req).await }
            }
            $(fn created($r: &$reply) -> Option<InodeId> {
                Some($created)
            })?
        }
    )*};
}

mutation! {
    Mknod => mknod -> Attr, created |r| r.ino;
    Create => create -> NewEntry, created |r| r.attr.ino;
    Mkdir => mkdir -> NewEntry, created |r| r.attr.ino;
    Symlink => symlink -> Attr, created |r| r.ino;
    Link => link -> Attr;
    Unlink => unlink -> Option<Attr>;
    Rmdir => rmdir -> Option<Attr>;
    Rename => rename -> (Option<Attr>, Option<Attr>);
    SetAttrs => setattr -> Attr;
    SetXattr => setxattr -> ();
    RemoveXattr => removexattr -> ();
    SetPolicy => set_policy -> Attr;
    ChunkCommit => commit_chunk -> Attr;
}

/// Sends a held change again, as a replay; answers where it now stands.
type Resend = Arc<
    dyn Fn(
            MasterClient,
            tarpc::context::Context,
        ) -> BoxFuture<'static, std::result::Result<std::result::Result<Durability, FsError>, RpcError>>
        + Send
        + Sync,
>;

/// A change the master answered before it was durable.
#[derive(Clone)]
struct HeldChange {
    id: RequestId,
    /// The master process that answered it.
    incarnation: u64,
    resend: Resend,
}

/// The changes of this session the master answered and has not yet
/// reported durable, by log position: what the client replays, in that
/// order, to the next master process if this one goes away
/// (docs/SEMANTICS.md, "Durability").
#[derive(Default)]
struct Held {
    /// The master process that answered `changes`.
    incarnation: u64,
    changes: std::collections::BTreeMap<u64, HeldChange>,
    /// Changes answered by earlier master processes, in order, not yet
    /// replayed (an answer of a new process came in before the shared
    /// connection's reconnect replayed them).
    stale: Vec<HeldChange>,
    /// When the oldest change now held was answered.
    since: Option<Instant>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.stale.is_empty()
    }
}

/// The requests of one client session: their ids, which are still
/// waiting for an answer or to be durable (the master forgets the answers
/// below the lowest), and the changes to replay.
struct Session {
    id: u64,
    next_seq: AtomicU64,
    pending: Mutex<std::collections::BTreeSet<u64>>,
    held: Mutex<Held>,
}

impl Session {
    fn new() -> Session {
        Session {
            id: rand::random(),
            next_seq: AtomicU64::new(1),
            pending: Mutex::new(Default::default()),
            held: Mutex::new(Held::default()),
        }
    }

    /// An answer says where the master's log stands: drops the changes
    /// now durable (their answers may then be forgotten by the master).
    fn durable(&self, d: &Durability) {
        let done: Vec<u64> = {
            let mut held = lock(&self.held);
            if held.incarnation != d.incarnation {
                return;
            }
            let keep = held.changes.split_off(&(d.durable + 1));
            let done = std::mem::replace(&mut held.changes, keep);
            if held.is_empty() {
                held.since = None;
            } else if !done.is_empty() {
                // The oldest left is younger than what went.
                held.since = Some(Instant::now());
            }
            done.into_values().map(|c| c.id.seq).collect()
        };
        self.settle(done);
    }

    /// Requests whose answers the master may now forget.
    fn settle(&self, seqs: Vec<u64>) {
        if !seqs.is_empty() {
            let mut pending = lock(&self.pending);
            for seq in seqs {
                pending.remove(&seq);
            }
        }
    }

    /// Keeps a change answered early until it is durable. Whether
    /// changes answered by an earlier master process still wait to be
    /// replayed (the caller then has them replayed).
    fn hold(&self, d: &Durability, change: HeldChange) -> bool {
        let mut held = lock(&self.held);
        if held.incarnation != d.incarnation {
            let older = std::mem::take(&mut held.changes);
            held.stale.extend(older.into_values());
            held.incarnation = d.incarnation;
        }
        held.changes.insert(d.at, change);
        held.since.get_or_insert_with(Instant::now);
        !held.stale.is_empty()
    }

    /// The master process of the changes held and the newest one's
    /// position (None: none held under the current process).
    fn newest_held(&self) -> Option<(u64, u64)> {
        let held = lock(&self.held);
        held.changes.keys().next_back().map(|at| (held.incarnation, *at))
    }

    /// Whether changes of an earlier master process wait for a replay.
    fn needs_replay(&self) -> bool {
        !lock(&self.held).stale.is_empty()
    }

    /// Whether changes have been held for longer than `age`.
    fn held_longer_than(&self, age: Duration) -> bool {
        lock(&self.held).since.is_some_and(|t| t.elapsed() > age)
    }

    /// How many changes wait to be durable.
    fn held_count(&self) -> usize {
        let held = lock(&self.held);
        held.changes.len() + held.stale.len()
    }

    /// A new request id; pending until [`Session::answered`]. Taken and
    /// marked pending under one lock: `answered_below` must never pass a
    /// number handed out and not yet marked.
    fn start(&self) -> RequestId {
        let mut pending = lock(&self.pending);
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        pending.insert(seq);
        RequestId { session: self.id, seq }
    }

    fn answered(&self, id: RequestId) {
        lock(&self.pending).remove(&id.seq);
    }

    /// Every request below this has its answer.
    fn answered_below(&self) -> u64 {
        let pending = lock(&self.pending);
        pending.first().copied().unwrap_or_else(|| self.next_seq.load(Ordering::Relaxed))
    }
}

/// Called with a fresh master connection before anyone else uses it.
pub type ReconnectHook = Box<dyn Fn(MasterClient) -> BoxFuture<'static, ()> + Send + Sync>;

/// The connection to the master. When it breaks, callers wait (up to the
/// `master_timeout` mount option) for the master to come back, instead of
/// failing at once: a master restart is invisible to applications.
pub struct MasterConn {
    /// Names this master's per-thread connections.
    pool: u64,
    /// The masters, as given (`m1:9400,m2:9400`), and those learned from
    /// the group since.
    addrs: std::sync::Mutex<String>,
    /// When the group's members were last asked for.
    learned: std::sync::Mutex<Instant>,
    /// The leader's address, as last found.
    addr: std::sync::Mutex<String>,
    secret: Secret,
    wait: Duration,
    /// How long one call waits for its answer.
    call_timeout: Duration,
    /// This client's request ids and held changes.
    session: Session,
    /// This client's host (told to the master with the session).
    host: String,
    /// When [`MasterConn::tick`] last checked the master was there.
    pinged: std::sync::Mutex<Instant>,
    /// Calls sent again (after a broken connection or a timeout).
    retries: AtomicU64,
    /// Connections made again to the master.
    reconnects: AtomicU64,
    /// The current client and its generation (bumped at each reconnect).
    client: tokio::sync::RwLock<(u64, Option<MasterClient>)>,
    on_reconnect: OnceLock<ReconnectHook>,
    /// The directory leases this session holds.
    leases: DirLeases,
    /// Wakes the lease poller (a lease was asked for).
    lease_wake: tokio::sync::Notify,
}

impl MasterConn {
    /// Connects to the master (fails fast if it is unreachable or refuses
    /// us); later reconnects wait up to `wait`.
    /// `host` names this client's host to the master (in its log).
    pub async fn connect(
        addrs: &str,
        secret: Secret,
        wait: Duration,
        host: &str,
    ) -> Result<MasterConn, stripefs_proto::net::ConnectError> {
        let addr = stripefs_proto::net::find_leader(addrs, &secret, CONNECT_TIMEOUT).await?;
        let client = MasterClient::from(CallStub::Shared(connect_channel(&addr, &secret, CONNECT_TIMEOUT).await?));
        let conn = MasterConn {
            pool: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            addrs: std::sync::Mutex::new(addrs.to_string()),
            learned: std::sync::Mutex::new(Instant::now().checked_sub(LEARN_EVERY).unwrap_or_else(Instant::now)),
            addr: std::sync::Mutex::new(addr.clone()),
            secret,
            wait,
            call_timeout: METADATA_TIMEOUT,
            session: Session::new(),
            host: host.to_string(),
            pinged: std::sync::Mutex::new(Instant::now()),
            retries: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            client: tokio::sync::RwLock::new((0, Some(client.clone()))),
            on_reconnect: OnceLock::new(),
            leases: DirLeases::new(true),
            lease_wake: tokio::sync::Notify::new(),
        };
        // Registered, the session's changes are answered before they are
        // on the master's disk. Unregistered (the call failed), they are
        // answered once durable, until a reconnect registers it.
        if let Err(e) = conn.open_session(&client).await {
            tracing::warn!("registering with the master at {addr}: {e}");
        }
        Ok(conn)
    }

    /// Sets how long one call waits for its answer (default [`METADATA_TIMEOUT`]).
    pub fn with_call_timeout(mut self, t: Duration) -> MasterConn {
        self.call_timeout = t;
        self
    }

    /// Calls sent again so far, and reconnections to the master.
    pub fn retries_and_reconnects(&self) -> (u64, u64) {
        (self.retries.load(Ordering::Relaxed), self.reconnects.load(Ordering::Relaxed))
    }

    /// Sets what to do on every reconnect (e.g. re-register open files).
    pub fn set_reconnect_hook(&self, hook: ReconnectHook) {
        let _ = self.on_reconnect.set(hook);
    }

    /// The address of the master the calls go to (the leader of the
    /// group, as last found).
    pub fn addr(&self) -> String {
        lock(&self.addr).clone()
    }

    /// The masters this connection may use: as given, and those learned
    /// from the group.
    pub fn addrs(&self) -> String {
        lock(&self.addrs).clone()
    }

    /// Asks the group for its members now and then (at most every
    /// [`LEARN_EVERY`]), so that a client given one master finds the
    /// others once that one is gone.
    async fn learn_members(&self) {
        {
            let mut at = lock(&self.learned);
            if at.elapsed() < LEARN_EVERY {
                return;
            }
            *at = Instant::now();
        }
        // The shared connection, if it is there (checked only when due:
        // this runs after every answered call).
        let Some((_, Some(c))) = self.client.try_read().ok().map(|g| g.clone()) else { return };
        let ctx = stripefs_proto::net::context_with_timeout(Duration::from_secs(2));
        if let Ok(Ok(st)) = c.group(ctx).await {
            let mut addrs = lock(&self.addrs);
            let merged = stripefs_proto::net::with_members(&addrs, &st);
            if *addrs != merged {
                tracing::info!("masters of the group: {merged}");
                *addrs = merged;
            }
        }
    }

    /// The key of this thread's own connection to the current leader.
    fn own_key(&self) -> OwnKey {
        OwnKey { pool: self.pool, addr: self.addr().into() }
    }

    /// The current connection, or a new one made by `deadline` (the
    /// caller's: a call's retries and reconnects together take about
    /// `master_timeout`, not a `master_timeout` each).
    async fn client(&self, deadline: Instant) -> Result<(u64, MasterClient)> {
        if let (g, Some(c)) = &*self.client.read().await {
            return Ok((*g, c.clone()));
        }
        let mut slot = self.client.write().await;
        if let (g, Some(c)) = &*slot {
            return Ok((*g, c.clone()));
        }
        let mut backoff = Duration::from_millis(50);
        let mut warned = false;
        loop {
            let found = stripefs_proto::net::find_leader(&self.addrs(), &self.secret, CONNECT_TIMEOUT).await;
            let connected = match found {
                Ok(addr) => connect_channel(&addr, &self.secret, CONNECT_TIMEOUT).await.map(|c| (addr, c)),
                Err(e) => Err(e),
            };
            match connected {
                Ok((addr, c)) => {
                    let c = MasterClient::from(CallStub::Shared(c));
                    // Leases of another master process are gone; those of
                    // this one may be, too (see `crate::leases`).
                    self.leases.drop_all();
                    // Replays first: the files to re-open may be among them.
                    if let Err(e) = self.open_session(&c).await {
                        if !warned {
                            tracing::warn!("registering with the master at {addr}: {e}");
                            warned = true;
                        }
                        let now = Instant::now();
                        if now >= deadline {
                            return Err(e);
                        }
                        tokio::time::sleep(backoff.min(deadline - now)).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                    if let Some(hook) = self.on_reconnect.get() {
                        hook(c.clone()).await;
                    }
                    tracing::info!("reconnected to the master at {addr}");
                    *lock(&self.addr) = addr;
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    slot.0 += 1;
                    slot.1 = Some(c.clone());
                    return Ok((slot.0, c));
                }
                // The master is there but refuses us: waiting will not help.
                Err(e @ (ConnectError::Refused { .. } | ConnectError::ServerNotAuthentic { .. })) => {
                    return Err(TransportError::connect(&self.addrs(), &e).into())
                }
                Err(e) => {
                    if Instant::now() + backoff > deadline {
                        return Err(TransportError::MasterUnreachable {
                            addr: self.addrs(),
                            waited: self.wait,
                            detail: e.to_string(),
                        }
                        .into());
                    }
                    if !warned {
                        tracing::warn!("waiting up to {:?} for the master at {}: {e}", self.wait, self.addrs());
                        warned = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Forgets the client of generation `generation` (if it is still the
    /// current one) after it broke.
    async fn drop_client(&self, generation: u64) {
        let mut slot = self.client.write().await;
        if slot.0 == generation {
            slot.1 = None;
        }
    }

    /// Runs one RPC; on a broken connection, waits for the master and
    /// tries again (see [`MasterConn`]). On a FUSE thread it goes over the
    /// thread's own connection (see the module documentation).
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(MasterClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, FsError>, RpcError>>,
    {
        // Reads: asking again after a lost answer is harmless.
        self.call_on(wants_own(), true, f).await
    }

    /// Sends a namespace mutation with a request id of its own and waits
    /// for its answer. A connection cut or a call that timed out is sent
    /// again with the same id (until `master_timeout`): the master applies
    /// it once and answers every copy the same.
    pub async fn mutate<M: Mutation>(&self, op: M) -> Result<M::Reply> {
        self.mutate_on(wants_own(), op).await
    }

    /// [`MasterConn::mutate`] on the shared connection (for `create`, which
    /// takes an open reference the master counts per connection).
    pub async fn mutate_shared<M: Mutation>(&self, op: M) -> Result<M::Reply> {
        self.mutate_on(false, op).await
    }

    async fn mutate_on<M: Mutation>(&self, own: bool, op: M) -> Result<M::Reply> {
        let id = self.session.start();
        let session = &self.session;
        let r = self
            .call_on(own, true, |c, ctx| {
                let req = Request { id, answered_below: session.answered_below(), op: op.clone(), replay: None };
                tracing::debug!(request = %id, "sending");
                M::send(c, ctx, req)
            })
            .await;
        match r {
            Ok(acked) => {
                let d = acked.durability;
                if d.is_durable() {
                    self.session.answered(id);
                } else {
                    // Held (and its answer kept by the master) until durable.
                    let replay = Replay { ino: M::created(&acked.value) };
                    let resend: Resend = Arc::new(move |c, ctx| {
                        let req = Request { id, answered_below: 1, op: op.clone(), replay: Some(replay) };
                        Box::pin(async move { M::send(c, ctx, req).await.map(|r| r.map(|a| a.durability)) })
                    });
                    let change = HeldChange { id, incarnation: d.incarnation, resend };
                    if self.session.hold(&d, change) {
                        // Answered by a new master process before this
                        // client replayed what the old one lost.
                        self.replay_now().await;
                    }
                }
                self.session.durable(&d);
                Ok(acked.value)
            }
            Err(e) => {
                self.session.answered(id);
                Err(e)
            }
        }
    }

    /// Registers this client's session with the master `c` answers for
    /// and, if changes it answered before were lost with another master
    /// process, sends them again, in their order (see [`Held`]).
    async fn open_session(&self, c: &MasterClient) -> Result<()> {
        let ctx = stripefs_proto::net::context_with_timeout(self.call_timeout);
        let info = c.open_session(ctx, self.session.id, self.host.clone()).await??;
        let to_replay: Vec<HeldChange> = {
            let mut held = lock(&self.session.held);
            let mut older = std::mem::take(&mut held.stale);
            if held.incarnation != info.incarnation {
                older.extend(std::mem::take(&mut held.changes).into_values());
                held.incarnation = info.incarnation;
            }
            if held.is_empty() {
                held.since = None;
            }
            older
        };
        // What the process that stopped cleanly answered is on disk (all
        // of it when `clean_after` is 0: a group, whose answers all were).
        let covered = |h: &HeldChange| info.clean && (info.clean_after == 0 || info.clean_after == h.incarnation);
        let (done, to_replay): (Vec<HeldChange>, Vec<HeldChange>) = to_replay.into_iter().partition(covered);
        self.session.settle(done.iter().map(|h| h.id.seq).collect());
        if !to_replay.is_empty() {
            tracing::warn!("the master restarted: replaying {} change(s) it had not yet made durable", to_replay.len());
        }
        let mut settled = Vec::new();
        let mut replayed = Vec::new();
        for (n, change) in to_replay.iter().enumerate() {
            let ctx = stripefs_proto::net::context_with_timeout(self.call_timeout);
            match (change.resend)(c.clone(), ctx).await {
                Ok(Ok(d)) if d.is_durable() => settled.push(change.id.seq),
                Ok(Ok(d)) => replayed.push((d, HeldChange { incarnation: d.incarnation, ..change.clone() })),
                Ok(Err(e)) => {
                    tracing::error!(
                        "replaying request {} after the master restarted failed ({e}): that change is lost",
                        change.id
                    );
                    settled.push(change.id.seq);
                }
                // The connection broke again: the next one replays what
                // is left (and, again, what this one replayed).
                Err(e) => {
                    let mut stale: Vec<HeldChange> = replayed.into_iter().map(|(_, h)| h).collect();
                    stale.extend_from_slice(&to_replay[n..]);
                    let mut held = lock(&self.session.held);
                    stale.append(&mut held.stale);
                    held.stale = stale;
                    drop(held);
                    self.session.settle(settled);
                    return Err(e.into());
                }
            }
        }
        for (d, change) in replayed {
            self.session.hold(&d, change);
        }
        self.session.settle(settled);
        if info.replay {
            let ctx = stripefs_proto::net::context_with_timeout(self.call_timeout);
            c.session_replayed(ctx, self.session.id).await??;
        }
        Ok(())
    }

    /// Has the shared connection made again now, which replays what this
    /// client holds from an earlier master process.
    async fn replay_now(&self) {
        let generation = {
            let slot = self.client.read().await;
            // Another caller's reconnect may have replayed them already.
            if !self.session.needs_replay() {
                return;
            }
            slot.0
        };
        self.drop_client(generation).await;
        if let Err(e) = self.client(Instant::now() + self.wait).await {
            tracing::warn!("replaying changes to the master: {e}");
        }
    }

    /// Waits until every change this client made is durable on the master
    /// (`fsync`, `fsyncdir`, and a timer shortly after each change).
    pub async fn sync(&self) -> Result<()> {
        // What is held now (changes made meanwhile by other threads are
        // not this call's business).
        let target = self.session.newest_held();
        for _ in 0..3 {
            if self.session.needs_replay() {
                // A new master process answered: what the old one lost is
                // replayed first (and then held under the new process).
                self.replay_now().await;
                if self.session.needs_replay() {
                    continue;
                }
            }
            let now = self.session.newest_held();
            let target = match (target, now) {
                (Some(t), Some(n)) if t.0 == n.0 => Some(t),
                // Replayed since: whatever the new process holds now.
                (Some(_), n) => n,
                (None, _) => None,
            };
            let Some((incarnation, at)) = target else { return Ok(()) };
            let d = self.call(|c, ctx| async move { c.sync(ctx).await }).await?;
            self.session.durable(&d);
            if d.incarnation == incarnation && d.durable >= at {
                return Ok(());
            }
            if d.incarnation != incarnation {
                // Answered by a process that has not seen our replay yet.
                let generation = self.client.read().await.0;
                self.drop_client(generation).await;
            }
        }
        Err(TransportError::Call {
            kind: CallFailure::Disconnected,
            detail: "the master did not make this client's changes durable".into(),
        }
        .into())
    }

    /// Makes durable, in the background, changes held longer than `age`
    /// (so a client that goes idle does not hold them for long), and
    /// otherwise checks the master is there (a client that went idle finds
    /// a restarted master, which waits for its replay, at once).
    pub async fn tick(&self, age: Duration) {
        if self.session.held_longer_than(age) {
            if let Err(e) = self.sync().await {
                tracing::debug!("background sync: {e}");
            }
        } else {
            {
                let mut last = lock(&self.pinged);
                if last.elapsed() < PING_EVERY {
                    return;
                }
                *last = Instant::now();
            }
            // Cheap; on a broken connection the reconnect replays.
            let _ = self.call(|c, ctx| async move { c.leader(ctx).await }).await;
        }
    }

    /// Turns directory leases off (before any is asked for).
    pub fn without_leases(mut self) -> MasterConn {
        self.leases = DirLeases::new(false);
        self
    }

    /// The directory leases of this session.
    pub fn leases(&self) -> &DirLeases {
        &self.leases
    }

    /// Asks for the lease on `dir` (see [`crate::leases`]), after
    /// [`DirLeases::missed`] said so; keeps it if granted.
    pub async fn ask_lease(&self, dir: InodeId) {
        let session = self.session.id;
        match self.call(|c, ctx| async move { c.lease_dir(ctx, session, dir).await }).await {
            Ok(Some(grant)) => {
                let lease = Duration::from_millis(grant.lease_ms);
                if self.leases.granted(dir, grant.id, grant.names, lease) {
                    tracing::debug!("holding the lease on directory {dir}");
                }
                self.lease_wake.notify_one();
            }
            Ok(None) => self.leases.refused(dir),
            Err(e) => {
                tracing::debug!("asking for the lease on directory {dir}: {e}");
                self.leases.refused(dir);
            }
        }
    }

    /// One round of the lease poller: waits until leases are held, then
    /// sends one poll (which renews them, gives back those released and
    /// brings recalls). A failed poll drops every lease.
    pub async fn poll_leases(&self) {
        if !self.leases.wants_poll() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.lease_wake.notified()).await;
            return;
        }
        let args = self.leases.poll_args();
        let sent = Instant::now();
        let session = self.session.id;
        let (held, released) = (args.held.clone(), args.released.clone());
        let polled = self
            .call_on(false, true, |c, ctx| {
                let (h, r) = (held.clone(), released.clone());
                async move { c.lease_poll(ctx, session, h, r).await }
            })
            .await;
        match polled {
            Ok(p) => self.leases.polled(&args, sent, &p.recalled, &p.lost),
            Err(e) => {
                tracing::debug!("lease poll: {e}");
                self.leases.poll_failed(args);
                self.leases.drop_all();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Changes this client holds until the master reports them durable.
    pub fn held_changes(&self) -> usize {
        self.session.held_count()
    }

    /// Tells the master this session ends (a clean unmount): a crash of
    /// the master then no longer waits for it. Makes its changes durable first.
    pub async fn close_session(&self) -> Result<()> {
        self.sync().await?;
        let id = self.session.id;
        self.call_shared(move |c, ctx| async move { c.close_session(ctx, id).await }).await
    }

    /// [`MasterConn::call`] on the shared connection, wherever it is made
    /// from: for the calls that take or drop open references, which the
    /// master counts per connection.
    pub async fn call_shared<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(MasterClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, FsError>, RpcError>>,
    {
        // Open references are counted: a second copy would count twice.
        self.call_on(false, false, f).await
    }

    /// Runs `f` until it gets an answer: again on a new connection when
    /// the connection broke, and (`retry_timeouts`: for calls that are
    /// safe to repeat) again when no answer came in time; until
    /// `master_timeout` has passed.
    async fn call_on<T, F, Fut>(&self, own: bool, retry_timeouts: bool, f: F) -> Result<T>
    where
        F: Fn(MasterClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, FsError>, RpcError>>,
    {
        let deadline = Instant::now() + self.wait;
        // The first retry is at once (a master restart); a master that
        // takes connections but breaks every call is not hammered.
        let mut backoff = Duration::ZERO;
        loop {
            // When the master cannot be reached, the shared connection
            // knows how to wait for it.
            let mine = match own {
                true => own_stub(self.own_key(), &self.secret).await.ok().map(MasterClient::from),
                false => None,
            };
            let (generation, mine, c) = match mine {
                Some(c) => (self.client.read().await.0, true, c),
                None => {
                    let (g, c) = self.client(deadline).await?;
                    (g, false, c)
                }
            };
            let ctx = stripefs_proto::net::context_with_timeout(self.call_timeout);
            // The master's span of this call carries the same trace id.
            tracing::debug!(trace = %ctx.trace_id(), own = mine, "master call");
            // A counted call (open, release) that got no answer may or may
            // not have been applied: rather than send it again, drop the
            // connection, as if it broke. The master then forgets what the
            // connection held, and the new one re-opens this client's files
            // (the reconnect hook) before the call is made again.
            let timed_out_counted = |e: &RpcError| matches!(e, RpcError::DeadlineExceeded) && !retry_timeouts && !mine;
            match f(c, ctx).await {
                // That master no longer leads (or never did): find the
                // leader and ask it (a mutation keeps its request id, so
                // one that was applied after all is not applied twice).
                Ok(Err(FsError::NotLeader)) if Instant::now() < deadline => {
                    if backoff.is_zero() {
                        tracing::warn!("the master at {} does not lead its group; finding the leader", self.addr());
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    self.drop_client(generation).await;
                    if mine {
                        self.client(deadline).await?;
                    }
                    let now = Instant::now();
                    tokio::time::sleep(backoff.min(deadline.saturating_duration_since(now))).await;
                    backoff = (backoff * 2).clamp(Duration::from_millis(20), Duration::from_millis(500));
                }
                Ok(r) => {
                    if !mine {
                        self.learn_members().await;
                    }
                    return r.map_err(ClientError::Fs);
                }
                Err(e) if is_broken(&e) || timed_out_counted(&e) => {
                    if backoff.is_zero() {
                        tracing::warn!("master connection lost: {e}");
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    // The master probably restarted: the shared connection
                    // is broken too, and must come back now (its reconnect
                    // re-opens this client's open files), not at its next use.
                    self.drop_client(generation).await;
                    if mine {
                        self.client(deadline).await?;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        tracing::warn!("master calls kept failing for {:?}: {e}", self.wait);
                        return Err(e.into());
                    }
                    tokio::time::sleep(backoff.min(deadline - now)).await;
                    backoff = (backoff * 2).clamp(Duration::from_millis(20), Duration::from_secs(1));
                }
                Err(RpcError::DeadlineExceeded) if retry_timeouts && Instant::now() < deadline => {
                    tracing::warn!("no answer from the master within {:?}; asking again", self.call_timeout);
                    self.retries.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// How often a connection asks the master group for its members.
const LEARN_EVERY: Duration = Duration::from_secs(2);

/// How often an idle client checks that its master is there (a restarted
/// master waits for its clients to come back and replay).
const PING_EVERY: Duration = Duration::from_secs(1);

/// Connections to storage nodes, by address.
pub struct NodePool {
    /// Names this pool's per-thread connections.
    pool: u64,
    secret: Secret,
    clients: tokio::sync::Mutex<HashMap<String, NodeClient>>,
}

impl NodePool {
    /// An empty pool.
    pub fn new(secret: Secret) -> NodePool {
        NodePool {
            pool: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            secret,
            clients: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn client(&self, addr: &str) -> Result<NodeClient> {
        if let Some(c) = self.clients.lock().await.get(addr) {
            return Ok(c.clone());
        }
        let c = connect_channel(addr, &self.secret, CONNECT_TIMEOUT)
            .await
            .map_err(|e| TransportError::connect(addr, &e))?;
        let c = NodeClient::from(CallStub::Shared(c));
        self.clients.lock().await.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Runs one RPC on the node at `addr`; on a broken connection,
    /// reconnects and tries once more. On a FUSE thread it goes over the
    /// thread's own connection (see the module documentation).
    pub async fn call<T, F, Fut>(&self, addr: &str, timeout: Duration, f: F) -> Result<T>
    where
        F: Fn(NodeClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, FsError>, RpcError>>,
    {
        self.call_on(wants_own(), addr, timeout, f).await
    }

    /// [`NodePool::call`] on the shared connection, for calls that run
    /// beside others of the same request (each blocking call on an own
    /// connection would wait for the one before).
    pub async fn call_shared<T, F, Fut>(&self, addr: &str, timeout: Duration, f: F) -> Result<T>
    where
        F: Fn(NodeClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, FsError>, RpcError>>,
    {
        self.call_on(false, addr, timeout, f).await
    }

    async fn call_on<T, F, Fut>(&self, own: bool, addr: &str, timeout: Duration, f: F) -> Result<T>
    where
        F: Fn(NodeClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, FsError>, RpcError>>,
    {
        let mut last = None;
        for _ in 0..2 {
            let (c, mine) = match own {
                true => {
                    let key = OwnKey { pool: self.pool, addr: addr.into() };
                    (NodeClient::from(own_stub(key, &self.secret).await?), true)
                }
                false => (self.client(addr).await?, false),
            };
            let ctx = stripefs_proto::net::context_with_timeout(timeout);
            tracing::debug!(trace = %ctx.trace_id(), node = addr, own = mine, "node call");
            match f(c, ctx).await {
                Ok(r) => return r.map_err(ClientError::Fs),
                Err(e) if is_broken(&e) => {
                    if !mine {
                        self.clients.lock().await.remove(addr);
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map(ClientError::from).unwrap_or_else(|| {
            TransportError::Call { kind: CallFailure::Disconnected, detail: format!("no connection to {addr}") }.into()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn change(seq: u64) -> HeldChange {
        let resend: Resend = Arc::new(|_, _| Box::pin(async { Ok(Ok(Durability::default())) }));
        HeldChange { id: RequestId { session: 1, seq }, incarnation: 0, resend }
    }

    fn answer(incarnation: u64, at: u64, durable: u64) -> Durability {
        Durability { incarnation, at, durable }
    }

    /// What a session holds: a change stays pending (its answer kept by
    /// the master) until an answer of the same master process says it is
    /// durable; an answer of another process never drops it, and the
    /// changes of the earlier process are kept, in order, for replay.
    #[test]
    fn held_changes_go_only_once_their_master_says_they_are_durable() {
        let s = Session::new();
        let ids: Vec<RequestId> = (0..4).map(|_| s.start()).collect();
        assert!(!s.hold(&answer(7, 10, 9), change(ids[0].seq)));
        assert!(!s.hold(&answer(7, 11, 9), change(ids[1].seq)));
        assert_eq!(s.answered_below(), ids[0].seq, "held changes count as unanswered");
        // Another process's marker says nothing of these.
        s.durable(&answer(8, 3, 3));
        assert_eq!(s.held_count(), 2);
        s.durable(&answer(7, 12, 10));
        assert_eq!(s.held_count(), 1);
        assert_eq!(s.answered_below(), ids[1].seq, "the durable one may be forgotten");
        // A new process answers before the old one's changes were replayed:
        // they are kept for the replay, not dropped.
        assert!(s.hold(&answer(8, 5, 4), change(ids[2].seq)), "the caller must have them replayed");
        assert_eq!(s.held_count(), 2);
        assert_eq!(lock(&s.held).stale.iter().map(|c| c.id.seq).collect::<Vec<_>>(), vec![ids[1].seq]);
        s.durable(&answer(8, 6, 5));
        assert_eq!(s.held_count(), 1, "the stale change waits for its replay");
        assert_eq!(s.answered_below(), ids[1].seq);
    }

    /// A "master" that authenticates every connection and closes it at
    /// once; counts the connections.
    async fn closing_master(secret: Secret) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::Relaxed);
                let secret = secret.clone();
                tokio::spawn(async move {
                    let _ = stripefs_proto::net::handshake_server(&mut stream, &secret).await;
                });
            }
        });
        (addr, count)
    }

    /// A master that accepts connections but breaks every call must not
    /// be reconnected to in a tight loop until `master_timeout`: the
    /// retries back off, and the call fails when the time is up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_that_keep_breaking_back_off() {
        let secret = Secret::new(b"0123456789abcdef".to_vec(), "test").expect("secret");
        let (addr, connections) = closing_master(secret.clone()).await;
        let wait = Duration::from_secs(2);
        // Bounded, so that a hang fails here instead of stalling the suite.
        let conn = tokio::time::timeout(wait * 5, MasterConn::connect(&addr, secret, wait, "test"))
            .await
            .expect("connecting returned")
            .expect("connect");
        let start = Instant::now();
        let call = conn.call(|c, ctx| async move { c.statfs(ctx).await });
        let r = tokio::time::timeout(wait * 5, call).await.expect("the call returned");
        assert!(r.is_err(), "a master that closes every connection answered: {r:?}");
        assert!(start.elapsed() >= wait, "gave up after {:?}, before master_timeout", start.elapsed());
        assert!(start.elapsed() < wait * 3, "took {:?}", start.elapsed());
        let n = connections.load(Ordering::Relaxed);
        assert!(n <= 20, "{n} connections in {wait:?}: reconnecting without backoff");
    }
}
