//! No Docker engine runs here, so docker-compose.yml is checked statically:
//! the services and images it must have, and that every DEVCONNECT_*
//! variable it sets is one the program really reads (from its `--help`),
//! and every variable the program requires is set.

use std::collections::BTreeSet;
use std::process::Command;

use serde_yaml::Value;

fn compose() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    serde_yaml::from_str(&std::fs::read_to_string(path).expect("docker-compose.yml")).expect("valid YAML")
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["services"].get(name).unwrap_or_else(|| panic!("compose has no service {name}"))
}

/// The env names a binary accepts, and those it requires, from its --help.
fn env_of(binary: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = std::env::var("DEVCONNECT_TEST_BIN_DIR").expect("run through ./dev test");
    let help = Command::new(format!("{dir}/{binary}")).arg("--help").output().expect("--help runs");
    let text = String::from_utf8_lossy(&help.stdout);
    // Required flags are the ones clap lists in the usage line.
    let usage = text.lines().find(|l| l.starts_with("Usage:")).unwrap_or_default().to_owned();
    let (mut known, mut required) = (BTreeSet::new(), BTreeSet::new());
    for block in text.split("\n      -").skip(1) {
        let Some(start) = block.find("[env: ") else { continue };
        let name: String = block[start + 6..].chars().take_while(|c| c.is_ascii_uppercase() || *c == '_').collect();
        let flag = format!("-{}", block.split_whitespace().next().unwrap_or_default());
        if usage.contains(&format!("{flag} ")) {
            required.insert(name.clone());
        }
        known.insert(name);
    }
    assert!(!known.is_empty(), "no env names found in {binary} --help:\n{text}");
    (known, required)
}

fn env_names(service: &Value) -> BTreeSet<String> {
    let env = &service["environment"];
    let mut names: BTreeSet<String> =
        env.as_mapping().into_iter().flatten().filter_map(|(k, _)| k.as_str().map(str::to_owned)).collect();
    // Merge keys (<<: [*a, *b]) arrive as a sequence of mappings.
    let merged = env.get("<<").map(|m| m.as_sequence().cloned().unwrap_or_else(|| vec![m.clone()])).unwrap_or_default();
    for mapping in merged.iter().filter_map(Value::as_mapping) {
        names.extend(mapping.keys().filter_map(|k| k.as_str().map(str::to_owned)));
    }
    names.retain(|n| n != "<<");
    names
}

#[test]
fn infrastructure_uses_the_production_images() {
    let doc = compose();
    assert!(service(&doc, "kafka")["image"].as_str().expect("image").starts_with("apache/kafka:"));
    let kafka_env = env_names(service(&doc, "kafka"));
    assert!(kafka_env.contains("KAFKA_PROCESS_ROLES"), "KRaft mode, no ZooKeeper");
    assert!(doc["services"].get("zookeeper").is_none());
    assert_eq!(service(&doc, "mongo")["image"], "mongo:7");
    let mongo_cmd = serde_yaml::to_string(&service(&doc, "mongo")["command"]).expect("yaml");
    assert!(mongo_cmd.contains("--replSet"), "transactions need a replica set");
    assert_eq!(service(&doc, "redis")["image"], "redis:7");
    let redis_cmd = serde_yaml::to_string(&service(&doc, "redis")["command"]).expect("yaml");
    assert!(redis_cmd.contains("--appendonly"), "AOF");
}

#[test]
fn services_are_built_and_configured_with_names_they_read() {
    let doc = compose();
    for (name, port) in [("command-api", "8080"), ("projector", "8082"), ("query-api", "8081")] {
        let svc = service(&doc, name);
        assert!(svc.get("build").is_some(), "{name} is built from the Dockerfile");
        let ports = serde_yaml::to_string(&svc["ports"]).expect("yaml");
        assert!(ports.contains(&format!("{port}:{port}")), "{name} publishes {port}");
        let set = env_names(svc);
        let (known, required) = env_of(name);
        for var in set.iter().filter(|v| v.starts_with("DEVCONNECT_")) {
            assert!(known.contains(var), "{name}: compose sets {var}, which {name} does not read");
        }
        for var in &required {
            assert!(set.contains(var), "{name}: requires {var}, compose does not set it");
        }
        assert!(required.contains("DEVCONNECT_JWT_SECRET") || name == "projector", "{name} must require the secret");
    }
    let secret = serde_yaml::to_string(&doc["x-secret"]["DEVCONNECT_JWT_SECRET"]).expect("yaml");
    assert!(secret.contains(":?"), "the JWT secret has no default: {secret}");
}
