//! [`ManagerBuilder`]: the options of a manager's server, and the two ways to make one (a
//! child process, [`ManagerBuilder::start`], or this process, [`ManagerBuilder::bind`]).

use std::time::Duration;

use mp_pipe::{Address, OneWay, Pipe};
use mp_process::{Process, StartMethod};

use crate::client::{Addr, Endpoint};
use crate::custom::{self, Served};
use crate::error::{Error, Result};
use crate::manager::{Manager, STOP_TIMEOUT};
use crate::server;
use crate::server::entry::{bind, resolve_types, server_main, Ready, Server, ServerArgs};

/// How long [`ManagerBuilder::start`] waits for the server to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Options for starting a manager's server: [`Manager::builder`].
#[derive(Clone, Default)]
pub struct ManagerBuilder {
    address: Option<Address>,
    authkey: Option<Vec<u8>>,
    method: Option<StartMethod>,
    types: Vec<custom::Registration>,
    /// A registration that failed, reported by `start`.
    bad_type: Option<String>,
    limits: server::Limits,
}

impl std::fmt::Debug for ManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ManagerBuilder")
            .field("address", &self.address)
            .field("authkey", &self.authkey.as_ref().map(|_| "..."))
            .field("start_method", &self.method)
            .field("types", &self.types)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Manager {
    /// Python's `Manager()`: starts a server with the default options and waits until it
    /// listens.
    pub fn start() -> Result<Manager> {
        ManagerBuilder::default().start()
    }

    /// Options for the server (address, authkey, start method).
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }
}

impl ManagerBuilder {
    /// Where the server listens: a TCP address (`Address::tcp("127.0.0.1", 0)?`; port 0 picks
    /// a free port, which [`Manager::address`] then tells) or a Unix socket. By default, a
    /// fresh abstract Unix socket that only this machine can reach.
    pub fn address(mut self, address: impl Into<Address>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// The key every client must prove it knows. By default 32 random bytes.
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.authkey = Some(key.to_vec());
        self
    }

    /// The start method of the server process (by default the process-wide default).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// The largest request the server reads, in bytes (default 16 MiB). A larger request
    /// closes its connection before anything is allocated for it: the proxy call fails (with
    /// [`Error::ServerGone`]; the thread's next call connects again) and the server goes on.
    /// Raise it to store larger values; the limit bounds what one request can make the server
    /// allocate, not what the objects hold in total.
    pub fn max_request_size(mut self, bytes: u64) -> Self {
        self.limits.max_request = bytes;
        self
    }

    /// How many connections the server serves at once (default 1024; each proxy-using thread
    /// of each client process holds one, each process one more for its references, and the
    /// server a thread for each). A connection past
    /// the limit is closed at once and its first call fails with
    /// [`Error::TooManyConnections`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n as u64;
        self
    }

    /// How long the server waits for a client to take a reply before it drops that
    /// connection (default 30 s; `None`: for ever). Bounds what a client that stops reading
    /// costs: its thread, and the locks its connection holds, which are then released.
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.write_timeout_ms =
            timeout.map_or(0, |t| (t.as_millis().min(u64::MAX as u128) as u64).max(1));
        self
    }

    /// Registers the type `S` under `typeid` (Python's `BaseManager.register(typeid,
    /// callable)` with the class as the callable): [`Manager::custom`] then makes objects of
    /// it (with `S::default()`) in the server. `S` must live in the program's executable (not
    /// a shared library), as every function that a spawned process calls; otherwise
    /// [`start`](Self::start) fails.
    pub fn register<S: Served + Default>(self, typeid: &str) -> Self {
        let r = custom::Registration::of::<S>(typeid);
        self.add(typeid, r)
    }

    /// Registers `ctor` under `typeid` (Python's `BaseManager.register(typeid, callable)`):
    /// every [`Manager::custom`] call runs `ctor` in the server and gets a fresh object. A
    /// `ctor` that panics makes that call fail with [`Error::Raised`] (the panic's message);
    /// the server goes on. As with [`register`](Self::register), `ctor` must live in the
    /// program's executable.
    ///
    /// ```
    /// use mp_manager::{Manager, Served};
    ///
    /// struct Greeter { greeting: String }
    ///
    /// impl Served for Greeter {
    ///     type Request = String;
    ///     type Reply = String;
    ///     fn handle(&mut self, name: String) -> String {
    ///         format!("{}, {name}", self.greeting)
    ///     }
    /// }
    ///
    /// fn polite() -> Greeter {
    ///     Greeter { greeting: "Good morning".into() }
    /// }
    ///
    /// let manager = Manager::builder().register_with("Greeter", polite).start()?;
    /// let g = manager.custom::<Greeter>("Greeter")?;
    /// assert_eq!(g.call(&"Ada".into())?, "Good morning, Ada");
    /// # Ok::<(), mp_manager::Error>(())
    /// ```
    pub fn register_with<S: Served>(self, typeid: &str, ctor: fn() -> S) -> Self {
        let r = custom::Registration::with::<S>(typeid, ctor);
        self.add(typeid, r)
    }

    fn add(mut self, typeid: &str, r: Result<custom::Registration>) -> Self {
        match r {
            Ok(r) => {
                self.types.retain(|t| t.typeid != typeid);
                self.types.push(r);
            }
            Err(e) => self.bad_type = Some(e.to_string()),
        }
        self
    }

    /// The key, the address and the registered types, with their defaults filled in.
    #[allow(clippy::type_complexity)] // one private call site each in `bind` and `start`
    fn settle(self) -> Result<(Vec<u8>, Address, Vec<custom::Registration>, server::Limits)> {
        if let Some(e) = self.bad_type {
            return Err(Error::Start(e));
        }
        let authkey = match self.authkey {
            Some(k) if k.is_empty() => return Err(Error::Start("the authkey is empty".into())),
            Some(k) => k,
            None => random_key()?,
        };
        let address = match self.address {
            Some(a) => a,
            None => Address::Abstract(
                format!(
                    "mp-manager-{}-{}",
                    std::process::id(),
                    hex(&random_key()?[..8])
                )
                .into_bytes(),
            ),
        };
        Ok((authkey, address, self.types, self.limits))
    }

    /// Makes the server in this process instead of a child (Python's `get_server()`): binds
    /// the address now; [`Server::serve_forever`] then serves.
    pub fn bind(self) -> Result<Server> {
        let (authkey, address, regs, limits) = self.settle()?;
        let types = resolve_types(&regs, mp_process::symbol::image_id())?;
        let listener = bind(&Addr::from_address(&address), &authkey)?;
        Ok(Server {
            listener,
            types,
            authkey,
            limits,
        })
    }

    /// Starts the server and waits until it listens.
    pub fn start(self) -> Result<Manager> {
        let method = self.method;
        let (authkey, address, types, limits) = self.settle()?;
        let (ready_rx, ready_tx) = Pipe::<Ready>::new(OneWay)?;
        let args = ServerArgs {
            addr: Addr::from_address(&address),
            authkey: authkey.clone(),
            ready: ready_tx,
            types,
            limits,
            image_id: mp_process::symbol::image_id().to_vec(),
        };
        let mut p = Process::new(server_main, args)
            .name("SyncManager")
            .daemon(true);
        if let Some(m) = method {
            p = p.start_method(m);
        }
        let mut child = p.start().map_err(|e| Error::Start(e.to_string()))?;
        let ready = ready_rx.recv_timeout(START_TIMEOUT);
        let addr = match ready {
            Ok(Ready::Listening(addr)) => addr,
            Ok(Ready::Failed(msg)) => {
                let _ = child.join_timeout(STOP_TIMEOUT);
                return Err(Error::Start(msg));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.join_timeout(STOP_TIMEOUT);
                return Err(Error::Start(format!("the server did not report: {e}")));
            }
        };
        Ok(Manager {
            ep: Endpoint { addr, authkey },
            server: Some(child),
        })
    }
}

fn random_key() -> Result<Vec<u8>> {
    let mut k = vec![0u8; 32];
    let mut got = 0;
    while got < k.len() {
        // SAFETY: getrandom writes at most `len - got` bytes into the live tail of `k`.
        let n = unsafe {
            libc::getrandom(k[got..].as_mut_ptr() as *mut libc::c_void, k.len() - got, 0)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Start(format!("getrandom: {e}")));
        }
        got += n as usize;
    }
    Ok(k)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
