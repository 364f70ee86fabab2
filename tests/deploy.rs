//! The Kubernetes manifests give the module what it needs: the image's redis.conf, a volume at /data,
//! the Snowflake key as a file named by SNOWFLAKE_PRIVATE_KEY_PATH, only settings the module knows,
//! probes that mean something, one container, no root.

use std::path::{Path, PathBuf};

use redis_writebehind::settings::{Key, SECRET_ENV};
use serde::Deserialize;
use serde_norway::Value;

const DIR: &str = "deploy/kubernetes";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    out.sort();
}

/// A manifest document and the file it came from.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        text(&self.value["kind"])
    }
    fn name(&self) -> &str {
        text(&self.value["metadata"]["name"])
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn list(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

/// Every document of every manifest; each file must parse.
fn docs() -> Vec<Doc> {
    let mut files = Vec::new();
    yaml_files(&root().join(DIR), &mut files);
    assert!(!files.is_empty(), "no manifests under {DIR}");
    let mut out = Vec::new();
    for path in files {
        let file = path
            .strip_prefix(root())
            .unwrap_or(&path)
            .display()
            .to_string();
        let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        for doc in serde_norway::Deserializer::from_str(&source) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            if !value.is_null() {
                out.push(Doc {
                    file: file.clone(),
                    value,
                });
            }
        }
    }
    out
}

/// The StatefulSets that run the module (the image built from this repository's Dockerfile).
fn module_statefulsets(all: &[Doc]) -> Vec<&Doc> {
    let sets: Vec<&Doc> = all
        .iter()
        .filter(|d| d.kind() == "StatefulSet")
        .filter(|d| {
            list(&d.value["spec"]["template"]["spec"]["containers"])
                .iter()
                .any(|c| text(&c["image"]).contains("redis-writebehind"))
        })
        .collect();
    assert!(
        sets.len() >= 3,
        "expected the single-pod StatefulSet, the Sentinel example's and the cluster example's"
    );
    sets
}

fn the_container(set: &Doc) -> &Value {
    let containers = list(&set.value["spec"]["template"]["spec"]["containers"]);
    assert_eq!(
        containers.len(),
        1,
        "{}: {} must have one container (the module replaces the sidecar)",
        set.file,
        set.name()
    );
    assert!(
        list(&set.value["spec"]["template"]["spec"]["initContainers"]).is_empty(),
        "{}: no init containers needed",
        set.file
    );
    &containers[0]
}

/// Where the Dockerfile installs `redis.conf`.
fn dockerfile_conf_path() -> String {
    repo_file("Dockerfile")
        .lines()
        .find_map(|l| l.trim().strip_prefix("COPY redis.conf "))
        .map(|dest| dest.trim().to_string())
        .expect("the Dockerfile copies redis.conf")
}

fn command_line(container: &Value) -> String {
    list(&container["command"])
        .iter()
        .chain(list(&container["args"]))
        .map(text)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn every_manifest_parses_and_names_its_objects() {
    for d in docs() {
        assert!(!d.kind().is_empty(), "{}: a document without kind", d.file);
        if d.kind() != "Kustomization" {
            assert!(
                !d.name().is_empty(),
                "{}: a {} without name",
                d.file,
                d.kind()
            );
        }
    }
}

#[test]
fn redis_runs_with_the_redis_conf_the_image_installs() {
    let conf = dockerfile_conf_path();
    let all = docs();
    for set in module_statefulsets(&all) {
        let line = command_line(the_container(set));
        assert!(
            line.contains(&format!("redis-server {conf}")),
            "{}: `{line}` does not start redis-server with {conf}",
            set.file
        );
    }
}

#[test]
fn data_is_on_a_persistent_volume_at_slash_data() {
    let all = docs();
    for set in module_statefulsets(&all) {
        let c = the_container(set);
        let mount = list(&c["volumeMounts"])
            .iter()
            .find(|m| text(&m["mountPath"]) == "/data")
            .unwrap_or_else(|| panic!("{}: nothing mounted at /data", set.file));
        let claims: Vec<&str> = list(&set.value["spec"]["volumeClaimTemplates"])
            .iter()
            .map(|t| text(&t["metadata"]["name"]))
            .collect();
        assert!(
            claims.contains(&text(&mount["name"])),
            "{}: /data is not a volume claim template ({claims:?})",
            set.file
        );
    }
}

#[test]
fn the_private_key_is_a_mounted_secret_named_by_snowflake_private_key_path() {
    let all = docs();
    for set in module_statefulsets(&all) {
        let c = the_container(set);
        let env = list(&c["env"]);
        let key_path = env
            .iter()
            .find(|e| text(&e["name"]) == "SNOWFLAKE_PRIVATE_KEY_PATH")
            .map(|e| text(&e["value"]))
            .unwrap_or_else(|| panic!("{}: SNOWFLAKE_PRIVATE_KEY_PATH not set", set.file));
        let secret_volumes: Vec<&Value> = list(&set.value["spec"]["template"]["spec"]["volumes"])
            .iter()
            .filter(|v| !v["secret"]["secretName"].is_null())
            .collect();
        let found = list(&c["volumeMounts"]).iter().any(|m| {
            let Some(volume) = secret_volumes
                .iter()
                .find(|v| text(&v["name"]) == text(&m["name"]))
            else {
                return false;
            };
            let Some(file) = key_path.strip_prefix(&format!("{}/", text(&m["mountPath"]))) else {
                return false;
            };
            let items = list(&volume["secret"]["items"]);
            m["readOnly"].as_bool() == Some(true)
                && (items.is_empty() || items.iter().any(|i| text(&i["path"]) == file))
        });
        assert!(
            found,
            "{}: {key_path} is not a file of a read-only Secret mount",
            set.file
        );
        let passphrase = env
            .iter()
            .find(|e| text(&e["name"]) == "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE");
        if let Some(p) = passphrase {
            assert!(
                !p["valueFrom"]["secretKeyRef"].is_null(),
                "{}: the passphrase must come from a Secret",
                set.file
            );
        }
    }
}

fn known(name: &str) -> bool {
    SECRET_ENV.contains(&name)
        || Key::by_name(name).is_some_and(|k| {
            let s = k.spec();
            s.name == name || s.aliases.contains(&name)
        })
}

#[test]
fn every_environment_variable_is_a_setting_the_module_knows() {
    let all = docs();
    let config_maps: Vec<&Doc> = all.iter().filter(|d| d.kind() == "ConfigMap").collect();
    for set in module_statefulsets(&all) {
        let c = the_container(set);
        let mut names: Vec<String> = list(&c["env"])
            .iter()
            .map(|e| text(&e["name"]).to_string())
            .collect();
        for from in list(&c["envFrom"]) {
            let wanted = text(&from["configMapRef"]["name"]);
            assert!(
                from["secretRef"].is_null(),
                "{}: take secrets by name, not envFrom",
                set.file
            );
            let cm = config_maps
                .iter()
                .find(|d| d.name() == wanted)
                .unwrap_or_else(|| panic!("{}: ConfigMap {wanted} is not in {DIR}", set.file));
            let data = cm.value["data"]
                .as_mapping()
                .unwrap_or_else(|| panic!("{}: ConfigMap {wanted} has no data", cm.file));
            names.extend(data.keys().map(|k| text(k).to_string()));
        }
        assert!(!names.is_empty(), "{}: no settings at all", set.file);
        for name in &names {
            assert!(
                known(name),
                "{}: {name} is not a setting of the module (see docs/configuration.md)",
                set.file
            );
        }
        // The sidecar's minimal deployment list is all there.
        for name in [
            "AUTO_QUOTE_LASTPLUS",
            "DRY_RUN",
            "HASH_NULL_TRACK_ID",
            "PROCESS_STALE_SAVED",
            "REDIS_CONSUMER",
            "REDIS_GROUP",
            "REDIS_STREAM",
            "SKIP_FRESHNESS",
            "STREAM_FAILOVER_TO_SNOWFLAKE",
            "SNOWFLAKE_ACCOUNT",
            "SNOWFLAKE_USER",
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "{}: {name} is not set",
                set.file
            );
        }
    }
}

fn probe_command(container: &Value, probe: &str) -> Vec<String> {
    list(&container[probe]["exec"]["command"])
        .iter()
        .map(|s| text(s).to_string())
        .collect()
}

#[test]
fn probes_ask_redis_and_the_module_and_fail_on_error_replies() {
    let all = docs();
    for set in module_statefulsets(&all) {
        let c = the_container(set);
        let liveness = probe_command(c, "livenessProbe");
        let readiness = probe_command(c, "readinessProbe");
        assert_eq!(
            liveness,
            ["redis-cli", "-e", "PING"],
            "{}: liveness",
            set.file
        );
        assert_eq!(
            readiness,
            ["redis-cli", "-e", "WB.STATUS"],
            "{}: readiness",
            set.file
        );
        assert!(
            !c["startupProbe"].is_null(),
            "{}: a startup probe covers loading the AOF",
            set.file
        );
    }
    // The image's own healthcheck: without -e, redis-cli exits 0 on an error reply.
    let dockerfile = repo_file("Dockerfile");
    assert!(
        dockerfile.contains("redis-cli -e WB.STATUS"),
        "the Dockerfile's HEALTHCHECK must use `redis-cli -e WB.STATUS`"
    );
}

#[test]
fn pods_run_as_the_redis_user_with_resources_set() {
    let all = docs();
    for set in all
        .iter()
        .filter(|d| matches!(d.kind(), "StatefulSet" | "Job"))
    {
        let pod = &set.value["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{}: {}",
            set.file,
            set.name()
        );
        assert_eq!(
            pod["securityContext"]["runAsUser"].as_u64(),
            Some(999),
            "{}: the redis image's user",
            set.file
        );
        for c in list(&pod["containers"]) {
            assert_eq!(
                c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{}",
                set.file
            );
            assert!(
                !c["resources"]["requests"]["memory"].is_null()
                    && !c["resources"]["limits"]["memory"].is_null(),
                "{}: memory requests and limits",
                set.file
            );
        }
    }
}

#[test]
fn each_statefulset_has_its_headless_service() {
    let all = docs();
    for set in all.iter().filter(|d| d.kind() == "StatefulSet") {
        let service = text(&set.value["spec"]["serviceName"]);
        let svc = all
            .iter()
            .find(|d| d.kind() == "Service" && d.name() == service)
            .unwrap_or_else(|| panic!("{}: no Service {service}", set.file));
        assert_eq!(
            text(&svc.value["spec"]["clusterIP"]),
            "None",
            "{}",
            svc.file
        );
    }
}

#[test]
fn network_policy_admits_the_app_and_lets_out_dns_and_https_only() {
    let all = docs();
    let policy = all
        .iter()
        .find(|d| d.kind() == "NetworkPolicy")
        .expect("a NetworkPolicy");
    let spec = &policy.value["spec"];
    let types: Vec<&str> = list(&spec["policyTypes"]).iter().map(text).collect();
    assert_eq!(types, ["Ingress", "Egress"]);
    let ports = |rules: &Value| -> Vec<u64> {
        list(rules)
            .iter()
            .flat_map(|r| list(&r["ports"]))
            .filter_map(|p| p["port"].as_u64())
            .collect()
    };
    assert_eq!(ports(&spec["ingress"]), [6379]);
    for rule in list(&spec["ingress"]) {
        assert!(
            !list(&rule["from"]).is_empty(),
            "ingress must name the app's pods"
        );
    }
    let mut egress = ports(&spec["egress"]);
    egress.sort_unstable();
    egress.dedup();
    assert_eq!(egress, [53, 443]);
}

#[test]
fn every_kustomization_lists_existing_files_and_no_secret() {
    let mut files = Vec::new();
    yaml_files(&root().join(DIR), &mut files);
    let kustomizations: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .collect();
    assert!(
        kustomizations.len() >= 3,
        "the base, the Valkey and the cluster kustomizations"
    );
    for path in kustomizations {
        let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let k: Value = serde_norway::from_str(&source).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let dir = path.parent().expect("a kustomization is in a directory");
        let resources = list(&k["resources"]);
        assert!(!resources.is_empty(), "{path:?} lists no resources");
        for r in resources.iter().map(text) {
            assert!(dir.join(r).exists(), "{path:?}: {r} does not exist");
            assert!(!r.contains("secret"), "a real Secret is created by hand");
        }
    }
}

/// The text of a container's shell script (`sh -c <script>`).
fn shell_script(container: &Value) -> &str {
    let command: Vec<&str> = list(&container["command"]).iter().map(text).collect();
    match command.as_slice() {
        ["sh", "-c", script] => script,
        other => panic!("expected `sh -c <script>`, got {other:?}"),
    }
}

#[test]
fn cluster_example_runs_six_cluster_nodes_and_a_job_that_forms_them_once() {
    let all = docs();
    let nodes = module_statefulsets(&all)
        .into_iter()
        .find(|d| d.file.contains("cluster"))
        .expect("the cluster example's Redis StatefulSet");
    let replicas = nodes.value["spec"]["replicas"].as_u64();
    assert_eq!(replicas, Some(6), "3 primaries, each with a replica");
    let line = command_line(the_container(nodes));
    for want in [
        "--cluster-enabled yes",
        "--cluster-config-file /data/nodes.conf",
    ] {
        assert!(line.contains(want), "{}: `{line}` lacks {want}", nodes.file);
    }
    // Each node runs rejoin.sh (tested for real in tests/cluster.rs) from the ConfigMap the
    // kustomization generates from the file beside it.
    assert!(
        line.contains("sh /scripts/rejoin.sh ") && line.contains(" 6379 /data/nodes.conf"),
        "{}: `{line}` does not run rejoin.sh",
        nodes.file
    );
    let scripts = list(&nodes.value["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find(|v| !v["configMap"].is_null())
        .map(|v| text(&v["configMap"]["name"]).to_string())
        .expect("the scripts' ConfigMap volume");
    let generated = all
        .iter()
        .filter(|d| d.kind() == "Kustomization" && d.file.contains("cluster"))
        .flat_map(|d| list(&d.value["configMapGenerator"]).iter())
        .find(|g| text(&g["name"]) == scripts)
        .unwrap_or_else(|| panic!("{scripts} is not generated by the cluster kustomization"));
    assert_eq!(
        list(&generated["files"])
            .iter()
            .map(text)
            .collect::<Vec<_>>(),
        ["rejoin.sh"]
    );
    assert!(root().join(DIR).join("cluster/rejoin.sh").is_file());
    let shards = all
        .iter()
        .filter(|d| d.kind() == "ConfigMap" && d.file.contains("cluster"))
        .find_map(|d| d.value["data"]["STREAM_SHARDS"].as_str())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("the cluster ConfigMap sets STREAM_SHARDS");
    assert!(
        shards >= 4 * 3,
        "STREAM_SHARDS={shards}: at least 4 shard streams per primary spread them over all 3"
    );
    let service = text(&nodes.value["spec"]["serviceName"]);
    let svc = all
        .iter()
        .find(|d| d.kind() == "Service" && d.name() == service)
        .expect("the cluster's headless Service");
    let ports: Vec<u64> = list(&svc.value["spec"]["ports"])
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(
        ports,
        [6379, 16379],
        "{}: client port and cluster bus",
        svc.file
    );

    let job = all
        .iter()
        .find(|d| d.kind() == "Job" && d.file.contains("cluster"))
        .expect("a Job that forms the cluster");
    let containers = list(&job.value["spec"]["template"]["spec"]["containers"]);
    assert_eq!(containers.len(), 1, "{}", job.file);
    let script = shell_script(&containers[0]);
    let pods: Vec<String> = (0..6).map(|i| i.to_string()).collect();
    for want in [
        format!("service={service}"),
        format!("for i in {}; do", pods.join(" ")),
        "redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes".to_string(),
        "grep -q '^cluster_state:ok'".to_string(),
        "set -eu".to_string(),
    ] {
        assert!(
            script.contains(&want),
            "{}: the script lacks `{want}`",
            job.file
        );
    }
    let skip = script.find("cluster_state:ok").unwrap_or(usize::MAX);
    let create = script.find("--cluster create").unwrap_or(0);
    assert!(
        skip < create,
        "{}: the Job must skip a formed cluster before it creates one",
        job.file
    );
}

#[test]
fn sentinel_example_monitors_pod_zero_of_the_module_statefulset() {
    let all = docs();
    let ha = module_statefulsets(&all)
        .into_iter()
        .find(|d| d.file.contains("sentinel"))
        .expect("the Sentinel example's Redis StatefulSet");
    assert_eq!(ha.value["spec"]["replicas"].as_u64(), Some(2));
    let service = text(&ha.value["spec"]["serviceName"]);
    let conf = all
        .iter()
        .filter(|d| d.kind() == "ConfigMap")
        .filter_map(|d| d.value["data"]["sentinel.conf"].as_str())
        .next()
        .expect("a sentinel.conf");
    let monitor = format!("{}-0.{service} 6379", ha.name());
    assert!(
        conf.lines()
            .any(|l| l.starts_with("sentinel monitor ") && l.contains(&monitor)),
        "sentinel.conf does not monitor {monitor}"
    );
    let sentinels = all
        .iter()
        .find(|d| {
            d.kind() == "StatefulSet"
                && command_line(&d.value["spec"]["template"]["spec"]["containers"][0])
                    .contains("redis-sentinel")
        })
        .expect("a Sentinel StatefulSet");
    assert!(sentinels.value["spec"]["replicas"].as_u64() >= Some(3));
}
