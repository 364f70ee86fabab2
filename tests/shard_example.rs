//! The application's side of sharding, `examples/shard.py`, picks the same shard stream as the
//! module: an entry the application writes to the stream the example names is never dead-lettered
//! as `wrong_shard`.

use std::path::Path;
use std::process::Command;

use redis_writebehind::shard::{member, shard_of};

fn example(row_id: &str, shards: u32) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/shard.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(row_id)
        .arg(shards.to_string())
        .output()
        .unwrap_or_else(|e| panic!("python3 {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

#[test]
fn examples_shard_py_names_the_stream_the_module_expects() {
    let ids = [
        "alice-1",
        "123456789",
        "42",
        "bob@example.com",
        "müller-7",
        "a/b:c",
    ];
    for shards in [2, 4, 12, 256] {
        for id in ids {
            let want = member("userdata-stream", shard_of(id.as_bytes(), shards));
            assert_eq!(example(id, shards), want, "row id {id:?}, {shards} shards");
        }
    }
    assert_eq!(
        example("alice-1", 1),
        "userdata-stream",
        "one shard: the stream itself"
    );
}
