//! The host: every call into the server's module API, and nothing else.
//!
//! Redis 8 and Valkey 9 differ here and only here. The layers above (the pipeline, the commands)
//! call down into these files; the server calls *up* only through one [`Listener`], which the
//! pipeline registers at load — so no file of the host imports from a layer above it.
//!
//! - [`gil`]: the server lock taken from a background thread, as a guard value.
//! - [`cluster`]: whether this node serves a key's slot (checked before every write on a cluster).
//! - [`stream`]: every command the module runs on a stream (`XREADGROUP`, `XACK`, `XADD`, ...).
//! - [`keyspace`]: notifications of every other key class, for hash mappings ([`Listener::key_event`]),
//!   with work scheduled to run inside the command ([`After`]).
//! - [`events`]: server events (loading, role change, shutdown, a key deleted, a flush), decoded
//!   into [`ServerEvent`] values.
//! - [`config`]: the module configs, derived from the settings table.
//! - [`info`]: the `INFO writebehind` section.
//! - [`ffi`]: the panic guard and safe replies at the boundary.
//! - [`logging`]: the server log. [`alloc`]: the server's allocator. [`server`]: which server this is.

pub mod alloc;
pub mod cluster;
pub mod config;
pub mod events;
pub mod ffi;
pub mod gil;
pub mod info;
pub mod keyspace;
pub mod logging;
pub mod server;
pub mod stream;

use std::sync::OnceLock;

pub use events::ServerEvent;
pub use info::Figure;

/// What the host tells the layers above. Implemented by the pipelines' registry and registered once
/// at load ([`listen`]); until then the host answers as if nothing listened.
pub trait Listener: Sync {
    /// A command touched `key` (main thread, inside the command; only while mappings are configured).
    /// Work that writes goes through `after`, never here.
    fn key_event(&self, _event: &[u8], _key: &[u8], _after: &After<'_>) {}
    /// A server event the module follows (main thread).
    fn server_event(&self, event: ServerEvent<'_>);
    /// The figures of `INFO writebehind`; `live` is false while the server writes a crash report.
    fn report(&self, live: bool) -> Vec<(String, Figure)>;
    /// Whether the module is stopping (`SHUTDOWN`, `MODULE UNLOAD`): the main thread may hold the
    /// lock while it waits for background threads, which must then not wait for that lock.
    fn stopping(&self) -> bool;
}

/// Schedules work to run right after the current notification, inside the same command.
pub struct After<'a> {
    ctx: &'a redis_module::Context,
}

impl After<'_> {
    /// Runs `job` after the notification, behind the panic guard.
    pub fn run(
        &self,
        what: &'static str,
        job: impl FnOnce(&redis_module::Context) + 'static,
    ) -> bool {
        let status = self.ctx.add_post_notification_job(move |ctx| {
            ffi::guard(what, || job(ctx));
        });
        status == redis_module::Status::Ok
    }
}

static LISTENER: OnceLock<&'static dyn Listener> = OnceLock::new();

/// Registers the listener (at load). A module loaded again in the same process keeps the first one:
/// it is the same value.
pub fn listen(listener: &'static dyn Listener) -> Result<(), String> {
    let _ = LISTENER.set(listener);
    Ok(())
}

fn listener() -> Option<&'static dyn Listener> {
    LISTENER.get().copied()
}
