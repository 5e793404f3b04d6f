//! The shipped deployment files stay correct as written: every YAML document parses, every
//! embedded ssegate configuration passes the real loader with only the variables its
//! container is given, and the containers' ports, probes and publish URLs agree with the
//! listen addresses of the configuration they run.

use saphyr_parser::{Event, Parser};
use serde_json::{Map, Value};
use ssegate::config::{BrokerKind, Config};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The documents of a YAML file as JSON values (every scalar a string), failing on a syntax
/// error. The shipped files use no anchors or tags.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut parser = Parser::new_from_str(&text);
    // Open collections: a mapping holds its pending key.
    let mut stack: Vec<(Value, Option<String>)> = Vec::new();
    let mut docs = Vec::new();
    while let Some(next) = parser.next_event() {
        let (event, span) =
            next.unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
        let done = match event {
            Event::MappingStart(..) => {
                stack.push((Value::Object(Map::new()), None));
                None
            }
            Event::SequenceStart(..) => {
                stack.push((Value::Array(Vec::new()), None));
                None
            }
            Event::MappingEnd | Event::SequenceEnd => stack.pop().map(|(v, _)| v),
            Event::Scalar(text, ..) => Some(Value::String(text.into_owned())),
            Event::Alias(_) => panic!("{}: unexpected alias at {span:?}", path.display()),
            _ => None,
        };
        let Some(value) = done else { continue };
        match stack.last_mut() {
            None => docs.push(value),
            Some((Value::Array(items), _)) => items.push(value),
            Some((Value::Object(map), key)) => match key.take() {
                None => *key = Some(value.as_str().unwrap().to_owned()),
                Some(k) => {
                    assert!(
                        map.insert(k.clone(), value).is_none(),
                        "{}: duplicate key {k}",
                        path.display()
                    );
                }
            },
            Some(_) => unreachable!(),
        }
    }
    docs
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Loads `text` with the real loader, `env` the only variables set.
fn load(text: &str, env: &BTreeMap<String, String>, origin: &str) -> Config {
    let lookup = |name: &str| env.get(name).cloned();
    ssegate::config::parse(text, &lookup).unwrap_or_else(|errors| {
        panic!("{origin}: the ssegate configuration is not valid:\n{errors}\n---\n{text}")
    })
}

fn s<'v>(v: &'v Value, path: &[&str]) -> &'v str {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    at.as_str()
        .unwrap_or_else(|| panic!("no string at {path:?} in {v}"))
}

fn list<'v>(v: &'v Value, key: &str) -> &'v [Value] {
    v[key].as_array().map_or(&[], Vec::as_slice)
}

#[test]
fn the_example_configs_load() {
    let mut files = Vec::new();
    yaml_files(&Path::new(ROOT).join("config"), &mut files);
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        documents(&file);
        let text = std::fs::read_to_string(&file).unwrap();
        // Their `${…}` all have defaults.
        load(&text, &BTreeMap::new(), &file.display().to_string());
    }
}

/// A port given by name or number in a probe or a Service, resolved against a container.
fn resolve_port(container: &Value, port: &str) -> u16 {
    if let Ok(n) = port.parse() {
        return n;
    }
    list(container, "ports")
        .iter()
        .find(|p| p["name"] == port)
        .map(|p| s(p, &["containerPort"]).parse().unwrap())
        .unwrap_or_else(|| panic!("no container port named {port} in {container}"))
}

/// Checks one Kubernetes manifest file; returns how many ssegate containers it has.
fn check_kubernetes(path: &Path) -> usize {
    let origin = path.display().to_string();
    let docs = documents(path);
    let of_kind = |kind: &'static str| docs.iter().filter(move |d| d["kind"] == kind);
    let mut checked = 0;
    for deployment in of_kind("Deployment") {
        let pod = &deployment["spec"]["template"]["spec"];
        let containers = list(pod, "containers");
        for c in containers {
            let args: Vec<&str> = list(c, "args").iter().filter_map(Value::as_str).collect();
            let Some(i) = args.iter().position(|a| *a == "--config") else {
                continue;
            };
            let name = s(c, &["name"]);
            let at = format!("{origin}: container {name}");
            // The configuration: the ConfigMap key mounted at the --config path.
            let file = args[i + 1];
            let mount = list(c, "volumeMounts")
                .iter()
                .find(|m| m["mountPath"] == file)
                .unwrap_or_else(|| panic!("{at}: nothing mounted at {file}"));
            let volume = list(pod, "volumes")
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("{at}: no volume {}", mount["name"]));
            let map_name = s(volume, &["configMap", "name"]);
            let config_map = of_kind("ConfigMap")
                .find(|m| m["metadata"]["name"] == map_name)
                .unwrap_or_else(|| panic!("{at}: no ConfigMap {map_name} in the file"));
            let text = s(config_map, &["data", s(mount, &["subPath"])]);

            // Only the variables the container really gets: its env and its Secret's values.
            let mut env: BTreeMap<String, String> = list(c, "env")
                .iter()
                .map(|e| {
                    let value = e["value"].as_str().unwrap_or("from-a-reference");
                    (s(e, &["name"]).to_owned(), value.to_owned())
                })
                .collect();
            for from in list(c, "envFrom") {
                let secret = s(from, &["secretRef", "name"]);
                let secret = of_kind("Secret")
                    .find(|d| d["metadata"]["name"] == secret)
                    .unwrap_or_else(|| panic!("{at}: no Secret {secret} in the file"));
                for (k, v) in secret["stringData"].as_object().unwrap() {
                    env.insert(k.clone(), v.as_str().unwrap().to_owned());
                }
            }
            let config = load(text, &env, &at);

            // Probes on the public listener, the internal one on the pod's loopback only.
            let listen = config.listen.port();
            for (probe, want) in [
                ("readinessProbe", "/_ssegate/readyz"),
                ("livenessProbe", "/_ssegate/healthz"),
            ] {
                let get = &c[probe]["httpGet"];
                assert_eq!(s(get, &["path"]), want, "{at}: {probe}");
                assert_eq!(resolve_port(c, s(get, &["port"])), listen, "{at}: {probe}");
            }
            assert!(config.admin_listen.ip().is_loopback(), "{at}: admin_listen");
            let ports: Vec<u16> = list(c, "ports")
                .iter()
                .map(|p| s(p, &["containerPort"]).parse().unwrap())
                .collect();
            assert!(ports.contains(&listen), "{at}: listen port not declared");
            assert!(
                !ports.contains(&config.admin_listen.port()),
                "{at}: the internal port is declared as a container port"
            );

            // The app is in the pod, and whoever publishes uses the internal address.
            let upstream = config.upstream.port_u16().unwrap_or(80);
            assert!(
                containers.iter().any(|o| o["name"] != name
                    && list(o, "ports")
                        .iter()
                        .any(|p| s(p, &["containerPort"]) == upstream.to_string())),
                "{at}: no other container listens on the upstream port {upstream}"
            );
            let publish_url = format!("http://{}/publish", config.admin_listen);
            let publishers: Vec<&str> = containers
                .iter()
                .flat_map(|o| list(o, "env"))
                .filter_map(|e| e["value"].as_str())
                .filter(|v| v.ends_with("/publish"))
                .collect();
            assert!(!publishers.is_empty(), "{at}: nobody publishes");
            for url in publishers {
                assert_eq!(url, publish_url, "{at}");
            }
            // …with the token ssegate checks: the same Secret's key.
            let secrets: Vec<&str> = list(c, "envFrom")
                .iter()
                .map(|f| s(f, &["secretRef", "name"]))
                .collect();
            for e in containers.iter().flat_map(|o| list(o, "env")) {
                let from = &e["valueFrom"]["secretKeyRef"];
                if e["name"] == "SSEGATE_PUBLISH_TOKEN" {
                    assert!(secrets.contains(&s(from, &["name"])), "{at}: {e}");
                    assert_eq!(s(from, &["key"]), "SSEGATE_PUBLISH_TOKEN", "{at}");
                }
            }

            // The Service sends browsers to the public listener.
            for service in of_kind("Service") {
                if service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"] {
                    for p in list(&service["spec"], "ports") {
                        assert_eq!(resolve_port(c, s(p, &["targetPort"])), listen, "{at}");
                    }
                }
            }

            // The grace period covers the preStop pause and the drain.
            let pause: u64 = c["lifecycle"]["preStop"]["exec"]["command"][1]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let period: u64 = s(pod, &["terminationGracePeriodSeconds"]).parse().unwrap();
            assert!(
                period > pause + config.shutdown.grace.as_secs(),
                "{at}: terminationGracePeriodSeconds {period} must exceed preStop {pause}s \
                 + shutdown.grace {:?}",
                config.shutdown.grace
            );

            // Several replicas only with a shared broker, or publishes miss browsers.
            let replicas: u32 = s(deployment, &["spec", "replicas"]).parse().unwrap();
            assert!(
                replicas == 1 || config.broker.kind != BrokerKind::Memory,
                "{at}: {replicas} replicas on the memory broker"
            );
            checked += 1;
        }
    }
    checked
}

#[test]
fn kubernetes_manifests_agree_with_their_configs() {
    let mut files = Vec::new();
    yaml_files(&Path::new(ROOT).join("deploy/kubernetes"), &mut files);
    files.sort();
    let counts: Vec<(String, usize)> = files
        .iter()
        .map(|f| (f.display().to_string(), check_kubernetes(f)))
        .collect();
    for (file, n) in &counts {
        assert!(*n >= 1, "{file}: no ssegate container found");
    }
    let names: Vec<&str> = counts.iter().map(|(f, _)| f.as_str()).collect();
    for want in ["sidecar.yaml", "redis.yaml"] {
        assert!(names.iter().any(|n| n.ends_with(want)), "{names:?}");
    }
}

/// A compose value after compose's own interpolation: `$$` is a literal `$`. A lone `${`
/// would be replaced from the host's environment, never reaching the container.
fn compose_text(text: &str, origin: &str) -> String {
    let unescaped = text.replace("$$", "\u{0}");
    assert!(
        !unescaped.contains('$'),
        "{origin}: a `$` that compose would substitute on the host (write `$$`):\n{text}"
    );
    unescaped.replace('\u{0}', "$")
}

/// `[ip:]host:container` of a compose port.
fn published(port: &str) -> (Option<&str>, u16, u16) {
    let parts: Vec<&str> = port.split(':').collect();
    match parts[..] {
        [host, container] => (None, host.parse().unwrap(), container.parse().unwrap()),
        [ip, host, container] => (Some(ip), host.parse().unwrap(), container.parse().unwrap()),
        _ => panic!("unexpected port {port}"),
    }
}

#[test]
fn compose_configs_escape_dollars_and_ports_agree() {
    let path = Path::new(ROOT).join("deploy/compose.yaml");
    let origin = path.display().to_string();
    let docs = documents(&path);
    assert_eq!(docs.len(), 1);
    let compose = &docs[0];
    let services = compose["services"].as_object().unwrap();
    let mut checked = 0;
    for (name, service) in services {
        let at = format!("{origin}: service {name}");
        let Some(mount) = list(service, "configs")
            .iter()
            .find(|c| c["target"] == "/etc/ssegate/ssegate.yaml")
        else {
            continue;
        };
        let source = s(mount, &["source"]);
        let text = compose_text(s(compose, &["configs", source, "content"]), &at);
        // Compose fills these from the host; what matters is which ones are set.
        let env: BTreeMap<String, String> = service["environment"]
            .as_object()
            .map(|m| {
                m.keys()
                    .map(|k| (k.clone(), format!("value-of-{k}")))
                    .collect()
            })
            .unwrap_or_default();
        let config = load(&text, &env, &at);

        let ports: Vec<(Option<&str>, u16, u16)> = list(service, "ports")
            .iter()
            .map(|p| published(p.as_str().unwrap()))
            .collect();
        assert!(
            ports.iter().any(|(_, _, c)| *c == config.listen.port()),
            "{at}: the public listener is not published"
        );
        for (ip, _, container) in &ports {
            if *container == config.admin_listen.port() {
                assert_eq!(*ip, Some("127.0.0.1"), "{at}: the internal port is public");
            }
        }
        // The app it proxies to is a service of this file, on that port.
        let host = config.upstream.host().unwrap();
        let port = config.upstream.port_u16().unwrap_or(80).to_string();
        let app = &services[host];
        assert!(
            list(app, "expose").iter().any(|p| p == port.as_str()),
            "{at}: the upstream {host}:{port} is not exposed"
        );
        // Publishers reach its internal listener on the compose network.
        for (other, o) in services {
            if let Some(url) = o["environment"]["PUBLISH_URL"].as_str()
                && url.starts_with(&format!("http://{name}:"))
            {
                assert_eq!(
                    url,
                    format!("http://{name}:{}/publish", config.admin_listen.port()),
                    "{origin}: service {other}"
                );
                assert!(
                    !config.admin_listen.ip().is_loopback(),
                    "{at}: {other} publishes but the internal listener is on loopback"
                );
                assert_eq!(
                    o["environment"]["SSEGATE_PUBLISH_TOKEN"],
                    service["environment"]["SSEGATE_PUBLISH_TOKEN"],
                    "{origin}: {other} and {name} use different tokens"
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 3, "{origin}: {checked} ssegate services");
    // Commands that run a shell keep their `$` for the container too.
    for (name, service) in services {
        for arg in list(service, "command") {
            compose_text(arg.as_str().unwrap(), &format!("{origin}: service {name}"));
        }
    }
}

#[test]
fn the_image_probes_the_public_listener_of_its_default_config() {
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("deploy/Dockerfile")).unwrap();
    let text = std::fs::read_to_string(Path::new(ROOT).join("config/ssegate.yaml")).unwrap();
    let config = load(&text, &BTreeMap::new(), "config/ssegate.yaml");
    let probe = format!("http://127.0.0.1:{}/_ssegate/healthz", config.listen.port());
    assert!(
        dockerfile.contains(&probe),
        "HEALTHCHECK should fetch {probe}"
    );
    assert!(dockerfile.contains("--locked"));
    assert!(dockerfile.contains("USER 10001"));
    let ignore = std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).unwrap();
    for dir in ["target/", "node_modules/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.ends_with(dir)),
            ".dockerignore lacks {dir}"
        );
    }
}
