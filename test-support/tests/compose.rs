//! No Docker engine runs here, so docker-compose.yml is checked statically:
//! the services and images it must have, and that every DEVCONNECT_*
//! variable it sets is one the program really reads (from its `--help`),
//! and every variable the program requires is set; and that the datastores
//! stay off the host and require credentials that have no default.

use std::collections::{BTreeMap, BTreeSet};
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

/// A service's environment, merge keys applied: the first mapping merged
/// wins over later ones, and the service's own keys over all of them.
fn env_map(service: &Value) -> BTreeMap<String, Value> {
    let env = &service["environment"];
    let mut vars = BTreeMap::new();
    // Merge keys (<<: [*a, *b]) arrive as a sequence of mappings.
    let merged = env.get("<<").map(|m| m.as_sequence().cloned().unwrap_or_else(|| vec![m.clone()])).unwrap_or_default();
    for mapping in merged.iter().rev().filter_map(Value::as_mapping) {
        vars.extend(mapping.iter().filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.clone()))));
    }
    for (k, v) in env.as_mapping().into_iter().flatten() {
        if let Some(k) = k.as_str().filter(|k| *k != "<<") {
            vars.insert(k.to_owned(), v.clone());
        }
    }
    vars
}

fn env_names(service: &Value) -> BTreeSet<String> {
    env_map(service).into_keys().collect()
}

/// One `${NAME<op><word>}` or `$NAME` that compose substitutes.
#[derive(Debug, Clone)]
struct Reference {
    name: String,
    /// `:-`, `-`, `:?`, `?`, `:+`, `+`, or empty.
    op: String,
    word: String,
}

impl Reference {
    /// Compose refuses to start while the variable is unset or empty.
    fn is_required(&self) -> bool {
        self.op == ":?"
    }
}

/// Compose interpolation: `text` with every reference replaced by `${i}`
/// (i its index in the list; `$$` is an escaped dollar, left as it is), and
/// the references. Those nested in a reference's word are not in the list.
fn interpolation(text: &str) -> (String, Vec<Reference>) {
    let (mut masked, mut refs, mut rest) = (String::new(), Vec::new(), text);
    while let Some(at) = rest.find('$') {
        masked.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            masked.push_str("$$");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let mut depth = 1;
            let end = body
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or_else(|| panic!("unterminated ${{ in {text:?}"));
            let inner = &body[..end];
            let (name, tail) = inner.split_at(inner.find(|c: char| !is_name_char(c)).unwrap_or(inner.len()));
            let op = [":-", ":?", ":+", "-", "?", "+"].into_iter().find(|op| tail.starts_with(op)).unwrap_or_default();
            masked.push_str(&format!("${{{}}}", refs.len()));
            refs.push(Reference { name: name.to_owned(), op: op.to_owned(), word: tail[op.len()..].to_owned() });
            rest = &body[end + 1..];
        } else {
            let len = after.find(|c: char| !is_name_char(c)).unwrap_or(after.len());
            if len == 0 {
                masked.push('$');
            } else {
                masked.push_str(&format!("${{{}}}", refs.len()));
                refs.push(Reference { name: after[..len].to_owned(), op: String::new(), word: String::new() });
            }
            rest = &after[len..];
        }
    }
    masked.push_str(rest);
    (masked, refs)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every reference in every string of the file, nested ones included.
fn all_references(value: &Value, out: &mut Vec<Reference>) {
    match value {
        Value::String(text) => {
            let mut pending = interpolation(text).1;
            while let Some(reference) = pending.pop() {
                pending.extend(interpolation(&reference.word).1);
                out.push(reference);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| all_references(v, out)),
        Value::Mapping(map) => map.iter().for_each(|(k, v)| {
            all_references(k, out);
            all_references(v, out);
        }),
        Value::Tagged(tagged) => all_references(&tagged.value, out),
        _ => {}
    }
}

fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    ["PASSWORD", "SECRET"].iter().any(|word| name.contains(word))
}

/// `value` is exactly one reference to a required variable.
fn is_required_reference(value: &str) -> bool {
    let (masked, refs) = interpolation(value);
    masked == "${0}" && refs[0].is_required()
}

/// The user and password of `url` (`scheme://user:password@host...`), each
/// with its references put back (as `${...}`); None when it has no password.
fn url_credentials(url: &str, scheme: &str) -> Option<(String, String)> {
    let (masked, refs) = interpolation(url);
    let authority = masked.strip_prefix(scheme)?.split('/').next()?;
    let (userinfo, _host) = authority.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    let unmask = |part: &str| {
        refs.iter().enumerate().fold(part.to_owned(), |text, (i, r)| {
            text.replace(&format!("${{{i}}}"), &format!("${{{}{}{}}}", r.name, r.op, r.word))
        })
    };
    Some((unmask(user), unmask(password)))
}

fn strings(value: &Value) -> Vec<String> {
    value.as_sequence().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
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
        assert!(ports.contains(&format!("{port}:{port}")) || name == "command-api", "{name} publishes {port}");
        if name == "command-api" {
            // `--scale command-api=3` needs a range of host ports, not one.
            assert!(ports.contains("${DEVCONNECT_COMMAND_API_PORTS:-8080}:8080"), "{name} can be scaled: {ports}");
            assert!(
                !env_names(svc).contains("DEVCONNECT_COMMAND_API_ADVERTISED_URL"),
                "each replica advertises its own"
            );
        }
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

/// Issue 11, item 12: Kafka, MongoDB and Redis are reachable on the compose
/// network only, Redis and MongoDB require a password, and no secret in the
/// file has a default (compose refuses to start without it).
#[test]
fn datastores_stay_on_the_compose_network_and_require_credentials() {
    let doc = compose();
    for name in ["kafka", "mongo", "redis"] {
        let svc = service(&doc, name);
        assert!(svc.get("ports").is_none(), "{name} publishes {:?} on the host", svc["ports"]);
        assert!(svc.get("network_mode").is_none(), "{name} must stay on the compose network");
    }
    let ops = strings(&service(&doc, "projector")["ports"]);
    assert!(
        !ops.is_empty() && ops.iter().all(|p| p.starts_with("127.0.0.1:")),
        "projector ops port on loopback: {ops:?}"
    );

    // Redis: the server requires a password, its healthcheck authenticates.
    let redis = service(&doc, "redis");
    let command = strings(&redis["command"]);
    let password = command.iter().position(|arg| arg == "--requirepass").and_then(|i| command.get(i + 1));
    assert!(
        password.is_some_and(|p| is_required_reference(p)),
        "redis must run with --requirepass ${{VAR:?...}}: {command:?}"
    );
    let health = serde_yaml::to_string(&redis["healthcheck"]).expect("yaml");
    assert!(
        env_names(redis).contains("REDISCLI_AUTH") || health.contains(" -a "),
        "the redis healthcheck must authenticate: {health}"
    );

    // MongoDB: a root user, authentication on (a keyFile, with --replSet),
    // and a healthcheck that authenticates (it runs rs.initiate).
    let mongo = service(&doc, "mongo");
    let mongo_env = env_map(mongo);
    for var in ["MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD"] {
        let value = mongo_env.get(var).and_then(Value::as_str).unwrap_or_default();
        assert!(is_required_reference(value), "mongo: {var} must be ${{VAR:?...}}, is {value:?}");
    }
    assert!(
        strings(&mongo["command"]).iter().any(|a| a == "--keyFile"),
        "mongo: a replica set with auth needs --keyFile"
    );
    let health = serde_yaml::to_string(&mongo["healthcheck"]).expect("yaml");
    assert!(health.contains("--authenticationDatabase"), "the mongo healthcheck must authenticate: {health}");

    // Every service connects with credentials.
    let (mut redis_urls, mut mongo_uris) = (0, 0);
    for (name, svc) in doc["services"].as_mapping().expect("services").iter() {
        let name = name.as_str().expect("service name");
        let env = env_map(svc);
        if let Some(url) = env.get("DEVCONNECT_REDIS_URL") {
            let url = url.as_str().expect("string");
            let (_, password) =
                url_credentials(url, "redis://").unwrap_or_else(|| panic!("{name}: no password in {url}"));
            assert!(is_required_reference(&password), "{name}: the Redis password must be ${{VAR:?...}}: {url}");
            redis_urls += 1;
        }
        if let Some(uri) = env.get("DEVCONNECT_MONGO_URI") {
            let uri = uri.as_str().expect("string");
            let (user, password) =
                url_credentials(uri, "mongodb://").unwrap_or_else(|| panic!("{name}: no credentials in {uri}"));
            assert!(!user.is_empty(), "{name}: no user in {uri}");
            assert!(is_required_reference(&password), "{name}: the MongoDB password must be ${{VAR:?...}}: {uri}");
            assert!(uri.contains("authSource=admin"), "{name}: the root user lives in admin: {uri}");
            mongo_uris += 1;
        }
        // A secret set in an environment is a required reference, never a literal.
        for (var, value) in env.iter().filter(|(var, _)| is_secret_name(var)) {
            let value = value.as_str().unwrap_or_default();
            assert!(is_required_reference(value), "{name}: {var} must be ${{VAR:?...}}, is {value:?}");
        }
    }
    assert_eq!((redis_urls, mongo_uris), (3, 3), "every service connects to Redis and MongoDB");

    // No secret has a default: ${X:-d}, ${X-d} and a bare ${X} or $X (empty
    // when unset) would all let compose start without one.
    let mut refs = Vec::new();
    all_references(&doc, &mut refs);
    assert!(refs.iter().any(|r| r.name == "DEVCONNECT_REDIS_PASSWORD"), "references found: {refs:?}");
    for r in refs.iter().filter(|r| is_secret_name(&r.name)) {
        assert!(r.is_required(), "{} must be ${{{}:?...}}, not {r:?}", r.name, r.name);
    }
}

#[test]
fn interpolation_is_parsed_like_compose() {
    let (masked, refs) = interpolation("redis://:${P:?set P (x)}@redis:6379/ $$HOME $U ${D:-a${E}b}");
    assert_eq!(masked, "redis://:${0}@redis:6379/ $$HOME ${1} ${2}");
    assert_eq!((refs[0].name.as_str(), refs[0].op.as_str(), refs[0].word.as_str()), ("P", ":?", "set P (x)"));
    assert_eq!((refs[1].name.as_str(), refs[1].op.as_str()), ("U", ""));
    assert_eq!((refs[2].name.as_str(), refs[2].op.as_str(), refs[2].word.as_str()), ("D", ":-", "a${E}b"));
    let mut all = Vec::new();
    all_references(&Value::String("${DEVCONNECT_X_PASSWORD:-changeme}".into()), &mut all);
    assert!(is_secret_name(&all[0].name) && !all[0].is_required(), "a default is caught: {all:?}");
    assert_eq!(
        url_credentials("mongodb://${U:?u}:${P:?p}@mongo:27017/?a=b", "mongodb://"),
        Some(("${U:?u}".to_owned(), "${P:?p}".to_owned()))
    );
    assert_eq!(url_credentials("redis://redis:6379/", "redis://"), None);
    assert!(!is_required_reference("${P?p}") && !is_required_reference("x${P:?p}") && is_required_reference("${P:?p}"));
}
