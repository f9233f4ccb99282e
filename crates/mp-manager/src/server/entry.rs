//! The two ways into a server: [`Server`], which serves in this process, and
//! [`server_main`], the target of the server process that [`Manager::start`](crate::Manager::start)
//! starts.

use std::time::Duration;

use mp_core::rkyv::{Archive, Deserialize, Serialize};
use mp_pipe::{Address, Listener, Writer};

use super::{serve, Limits, Types};
use crate::client::Addr;
use crate::custom;
use crate::error::{Error, Result};

/// What the server tells the process that started it.
#[derive(Archive, Serialize, Deserialize, Debug)]
#[rkyv(crate = mp_core::rkyv)]
pub(crate) enum Ready {
    Listening(Addr),
    Failed(String),
}

/// What the server process is started with.
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub(crate) struct ServerArgs {
    /// Where to listen.
    pub(crate) addr: Addr,
    /// The key clients must know.
    pub(crate) authkey: Vec<u8>,
    /// Where to say that the server listens, or why it does not.
    pub(crate) ready: Writer<Ready>,
    /// The registered types, to be resolved in the server process.
    pub(crate) types: Vec<custom::Registration>,
    /// What one client may cost the server.
    pub(crate) limits: Limits,
    /// The executable's identity, which the registered types' addresses belong to.
    pub(crate) image_id: Vec<u8>,
}

/// The registered types, resolved in the process that serves them.
pub(crate) fn resolve_types(regs: &[custom::Registration], image_id: &[u8]) -> Result<Types> {
    let mut types = Types::new();
    for t in regs {
        let ctor = t
            .resolve(image_id)
            .map_err(|e| Error::Start(format!("registered type {:?}: {e}", t.typeid)))?;
        types.insert(t.typeid.clone(), (t.type_name.clone(), ctor));
    }
    Ok(types)
}

/// Binds the listener of a server (every connection must pass the authkey handshake).
pub(crate) fn bind(addr: &Addr, authkey: &[u8]) -> Result<Listener> {
    let mut listener = Listener::bind(addr.to_address()?, Some(authkey))?;
    // A client that connects and never answers the challenge cannot stall the others.
    listener.set_handshake_timeout(Some(Duration::from_secs(10)));
    Ok(listener)
}

/// The server process's target.
pub(crate) fn server_main(args: ServerArgs) {
    let ready = resolve_types(&args.types, &args.image_id)
        .and_then(|types| Ok((types, bind(&args.addr, &args.authkey)?)));
    let (types, listener) = match ready {
        Ok(r) => r,
        Err(e) => {
            let _ = args.ready.send(&Ready::Failed(e.to_string()));
            return;
        }
    };
    let addr = Addr::from_address(listener.address());
    if args.ready.send(&Ready::Listening(addr)).is_err() {
        return;
    }
    drop(args.ready);
    serve(listener, types, args.limits);
}

/// A manager's server in this process (Python's `manager.get_server()`), made by
/// [`ManagerBuilder::bind`](crate::ManagerBuilder::bind): the usual way to host objects for processes that connect over
/// TCP ([`Manager::connect`](crate::Manager::connect)).
///
/// ```
/// use mp_manager::{Manager, Queue};
/// use mp_pipe::Address;
///
/// let server = Manager::builder()
///     .address(Address::tcp("127.0.0.1", 0)?)
///     .authkey(b"secret")
///     .bind()?;
/// let address = server.address().clone();
/// let serving = std::thread::spawn(move || server.serve_forever());
///
/// // Elsewhere (here: the same process): connect, use, and stop the server.
/// let m = Manager::connect(address, b"secret")?;
/// let jobs = m.named::<Queue<String>>("jobs")?;
/// jobs.put(&"hello".into())?;
/// assert_eq!(jobs.get()?, "hello");
/// m.shutdown()?;
/// serving.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server {
    pub(crate) listener: Listener,
    pub(crate) types: Types,
    pub(crate) authkey: Vec<u8>,
    pub(crate) limits: Limits,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("address", self.listener.address())
            .finish()
    }
}

impl Server {
    /// The address the server listens on (with the real port when port 0 was asked for).
    pub fn address(&self) -> &Address {
        self.listener.address()
    }

    /// The key clients must know.
    pub fn authkey(&self) -> &[u8] {
        &self.authkey
    }

    /// Serves (one thread per connection) until a client calls [`Manager::shutdown`](crate::Manager::shutdown); then
    /// stops accepting, closes the connections and returns.
    pub fn serve_forever(self) -> Result<()> {
        serve(self.listener, self.types, self.limits);
        Ok(())
    }
}
