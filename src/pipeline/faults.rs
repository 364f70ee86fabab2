//! Fault injection for the hostile tests: off unless the server process was started with
//! `WB_TEST_FAULTS=1` in its environment (no module setting, no command can turn it on).
//!
//! When on, an entry carrying the field `wb-test-panic` makes a pipeline thread panic at a chosen
//! place, so the tests can prove that a dying thread is caught, logged, restarted and loses nothing:
//! `decoder` (while decoding that entry), `claimer` (once, after claiming it), `claimer-always`
//! (every time it is claimed), `worker` (once, in the worker holding it, outside a batch).
//!
//! `WB_TEST_SPAWN_REFUSED=<thread name>[,<thread name>...]` (with `WB_TEST_FAULTS=1`) makes starting a
//! thread of that name fail as if the system refused it (e.g. `WB.FLUSH`), so the tests can prove
//! that a refused thread leaves the server responsive and nothing counted behind.

use std::collections::HashSet;
use std::sync::LazyLock;

use parking_lot::Mutex;

use crate::entry::Field;

static ENABLED: LazyLock<bool> =
    LazyLock::new(|| std::env::var("WB_TEST_FAULTS").is_ok_and(|v| v == "1"));

static SPAWN_REFUSED: LazyLock<Vec<String>> = LazyLock::new(|| {
    if !*ENABLED {
        return Vec::new();
    }
    std::env::var("WB_TEST_SPAWN_REFUSED")
        .unwrap_or_default()
        .split(',')
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect()
});

/// Whether starting a thread called `name` is to fail.
pub fn spawn_refused(name: &str) -> bool {
    SPAWN_REFUSED.iter().any(|n| n == name)
}

/// Entry IDs that already made their one-time panic.
static FIRED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
/// Entry IDs a worker is to panic on.
static WORKER: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn asked<F: Field>(fields: &[F]) -> Option<&[u8]> {
    if !*ENABLED {
        return None;
    }
    fields
        .iter()
        .find(|f| f.name() == b"wb-test-panic")
        .map(Field::value)
}

fn first_time(id: &str) -> bool {
    FIRED
        .lock()
        .get_or_insert_with(HashSet::new)
        .insert(id.to_string())
}

/// Called while decoding the entry `id`.
pub fn in_decoder<F: Field>(id: &str, fields: &[F]) {
    if asked(fields) == Some(b"decoder") {
        panic!("injected decoder fault on {id}");
    }
}

/// Called by the claimer for each claimed entry, before it is sent to a worker.
pub fn in_claimer<F: Field>(id: &str, fields: &[F]) {
    match asked(fields) {
        Some(b"claimer-always") => panic!("injected claimer fault on {id}"),
        Some(b"claimer") if first_time(id) => {
            panic!("injected claimer fault on {id}")
        }
        Some(b"worker") if first_time(id) => {
            WORKER
                .lock()
                .get_or_insert_with(HashSet::new)
                .insert(id.to_string());
        }
        _ => {}
    }
}

/// Called by a worker for each entry it receives.
pub fn in_worker(id: &str) {
    if !*ENABLED {
        return;
    }
    let hit = WORKER.lock().as_mut().is_some_and(|w| w.remove(id));
    if hit {
        panic!("injected worker fault on {id}");
    }
}
